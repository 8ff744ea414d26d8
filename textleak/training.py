"""The training protocol behind a shared gradient, as the attacker reads it from the public
metadata (`threat.PUBLIC_METADATA`; written by `capturing.CaptureBuilder`).

    mode          "eval" | "train" (dropout active)
    dropout       {setting: rate}: the model's dropout rates
    clipping      the protocol's bound `max_norm` (whether a step hit it is the victim's: the
                  attacker reads it off the gradient's norm, `clip_acted`); `per_layer`: each
                  parameter's own bound (`per_layer_norm`; which ones hit it: `clipped_tensors`)
    precision     "float32" | "bfloat16" | "float16": the autocast dtype of the forward pass
    padding       {"side": "right" | "left", "length": padded length or None, "lengths": each
                  micro-batch's, "to": fixed length or None, "multiple": pad_to_multiple_of or None}
                  (left padding: `text.padding.LeftPadding.of` reads it)
    accumulation  micro-batches summed into the shared gradient
    reduction     how the loss reduces over examples

`TrainingSettings.of(metadata)` reads them back. A file written before these were recorded gets
`recorded=False` and the settings of its source (an old `textleak capture`: eval, unclipped,
float32; an old Trainer capture: train mode, its `max_grad_norm`), and `note()` says so in one line.

What the settings change for an attack: global-norm clipping, accumulation and a sum reduction
multiply the gradient (or a sentence's share of it) by a factor the attacker does not know, so
whatever compares values fits the factor (`text.leaks.scale`); bfloat16 / float16 autocast
rounds every product, so spans have no clean rank gap (`text.leaks.precision`); train mode drops
coordinates of every layer input, so no candidate lies in a span exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

#: unit roundoff of each autocast precision: thresholds follow the computation
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
#: the dtype a reduced precision rounds layer inputs to
ROUND_TO = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TrainingSettings:
    mode: str = "eval"
    dropout: Mapping[str, float] = field(default_factory=dict)
    max_norm: float | None = None
    per_layer_norm: float | None = None
    precision: str = "float32"
    padding: Mapping[str, Any] = field(default_factory=lambda: {"side": "right", "length": None})
    accumulation: int = 1
    reduction: str = "mean"
    recorded: bool = True

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> "TrainingSettings":
        capture = metadata.get("capture") or {}
        if "precision" in capture and capture.get("mode") in ("eval", "train"):
            clipping = capture.get("clipping") or {}
            return cls(mode=capture["mode"], dropout=dict(capture.get("dropout") or {}),
                       max_norm=clipping.get("max_norm"), per_layer_norm=clipping.get("per_layer"), precision=capture.get("precision") or "float32",
                       padding=dict(capture.get("padding") or {"side": "right", "length": None}),
                       accumulation=int((capture.get("accumulation") or {}).get("steps", 1)),
                       reduction=(capture.get("loss") or {}).get("reduction", "mean"))
        if str(capture.get("mode", "")).startswith("train") or "max_grad_norm" in capture:  # an old Trainer file
            return cls(mode="train", dropout={}, max_norm=capture.get("max_grad_norm") or None,
                       accumulation=int(capture.get("gradient_accumulation_steps") or 1), recorded=False)
        return cls(recorded=False)

    @property
    def dropout_active(self) -> bool:
        """Whether dropout may have acted (train mode with a positive or unrecorded rate)."""
        return self.mode == "train" and (not self.dropout or any(p > 0 for p in self.dropout.values()))

    @property
    def reduced_precision(self) -> bool:
        return self.precision in ROUND_TO

    @property
    def roundoff(self) -> float:
        return UNIT_ROUNDOFF.get(self.precision, UNIT_ROUNDOFF["float32"])

    def clip_acted(self, gradients: Mapping[str, torch.Tensor]) -> bool:
        """Whether clipping scaled this gradient: its global norm sits at the bound (a gradient
        clipped to c has norm c; one below it was left alone)."""
        if not self.max_norm:
            return False
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gradients.values()))
        return norm >= self.max_norm * (1 - 1e-3)

    def clipped_tensors(self, gradients: Mapping[str, torch.Tensor]) -> set[str]:
        """Under per-layer clipping, the parameters whose gradient sits at the bound: each was
        scaled by its own unknown factor (the others by none)."""
        if not self.per_layer_norm:
            return set()
        c = self.per_layer_norm  # clipping divides by the norm + 1e-6 (torch's rule): a clipped norm is in [c^2/(c+1e-6), c]
        bound = c * c / (c + 1e-6) * (1 - 1e-4)
        return {n for n, g in gradients.items() if float(g.double().norm()) >= bound}

    def scale_known(self, gradients: Mapping[str, torch.Tensor]) -> bool:
        """Whether the gradient is the plain mean-loss gradient of its batch: no clipping that
        acted, no accumulation, a mean reduction. Otherwise a positive factor is unknown."""
        return not self.clip_acted(gradients) and not self.clipped_tensors(gradients) and self.accumulation == 1 \
            and self.reduction == "mean"

    def note(self) -> str | None:
        """One line for a file that does not record its protocol, else None."""
        if self.recorded:
            return None
        return ("the capture does not record its training settings (an older file): attacked as "
                + ("a Trainer step with dropout rates unknown" if self.mode == "train"
                   else "an eval-mode, unclipped, float32 step"))
