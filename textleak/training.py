"""The training settings behind a shared gradient, as the capture recorded them.

A gradient file's `metadata["capture"]["training"]` (written by `capture_gradients` and by the
transformers callback) says how the step was taken:

    mode          "train" (dropout active) or "eval"
    dropout       {"hidden": p, "attention": p}: the rates of the model's dropout layers in that mode
    clip          {"max_norm": c, "clipped": bool, "per": "global" | "tensor"} (None when off)
    precision     "fp32" | "bf16" | "fp16": the precision of the forward/backward computation
                  (autocast); the gradient's own dtype can be wider (fp32 master weights)
    padding       {"side": "right" | "left", "widths": [padded width of each micro-batch], "longest": n}
                  (padded positions get no gradient; only the side moves the tokens' positions)
    accumulation  micro-batches summed into the step

`TrainingSettings.of(metadata)` reads them back. Files written before these were recorded get
`recorded=False` and the settings of their source (`capture_gradients`: eval, unclipped, fp32,
right-padded to the longest; an older Trainer capture: train mode with the model's rates unknown,
its recorded `max_grad_norm`), and `note()` says so in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
#: relative precision of one rounding in each (unit roundoff): thresholds follow the computation
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


@dataclass(frozen=True)
class TrainingSettings:
    mode: str = "eval"
    dropout: Mapping[str, float] = field(default_factory=dict)
    clip: Mapping[str, Any] | None = None
    precision: str = "fp32"
    padding: Mapping[str, Any] = field(default_factory=lambda: {"side": "right"})
    accumulation: int = 1
    recorded: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("recorded")
        return d

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> "TrainingSettings":
        capture = metadata.get("capture", {}) or {}
        rec = capture.get("training")
        if isinstance(rec, Mapping):
            known = {k: rec[k] for k in ("mode", "dropout", "clip", "precision", "padding", "accumulation") if k in rec}
            return cls(**known)
        if capture.get("source") == "transformers.Trainer":  # before settings were recorded
            norm = capture.get("max_grad_norm") or 0
            return cls(mode="train", dropout={"hidden": None, "attention": None},
                       clip={"max_norm": norm, "clipped": None} if norm else None,
                       accumulation=int(capture.get("gradient_accumulation_steps") or 1), recorded=False)
        return cls(recorded=False)

    @property
    def dropout_active(self) -> bool:
        """Whether dropout may have been active (unknown rates count as active)."""
        return self.mode == "train" and any(p is None or p > 0 for p in self.dropout.values())

    @property
    def scale_known(self) -> bool:
        """Whether the gradient is the plain mean-loss gradient (no clipping that acted, no
        accumulation, no fp16 loss scaling): otherwise a positive factor is unknown."""
        clipped = bool(self.clip) and self.clip.get("clipped") is not False
        return not clipped and self.accumulation == 1 and self.precision != "fp16"

    @property
    def clip_per_tensor(self) -> bool:
        """Whether each tensor was clipped by its own norm (else the global norm, as the Trainer does)."""
        return bool(self.clip) and self.clip.get("per") == "tensor"

    @property
    def roundoff(self) -> float:
        return UNIT_ROUNDOFF.get(self.precision, UNIT_ROUNDOFF["fp32"])

    def note(self) -> str | None:
        if self.recorded:
            return None
        return ("the capture does not record its training settings (an older file): attacked as "
                + ("a Trainer step with dropout rates unknown" if self.mode == "train" else "an eval-mode, unclipped, float32 step"))


def dropout_rates(model: torch.nn.Module) -> dict[str, float]:
    """The rates of a model's dropout layers by kind (attention probabilities vs hidden states)."""
    rates: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout):
            kind = "attention" if "attention.self" in name or name.endswith("attn_dropout") else "hidden"
            rates[kind] = max(rates.get(kind, 0.0), float(m.p))
    return rates
