"""The threat model as types.

An attack receives an `Observation`: the shared gradients, the public description of the model
and what the attacker is *declared* to know (`Knowledge`). The private batch lives in a
`Reference`, which only scoring reads; attacks never receive one.

The attacker's view is built, not filtered: `Observation` copies out of a gradient file's
metadata only the fields `PUBLIC_METADATA` names, so a field a capture adds stays with the
victim unless it is named there. The split:

public (what a party receiving the update knows)
    modality; model (the spec: name, family, task, classes, head/init seed, hashes, image input
    shape and normalisation): the attacker holds the same model;
    capture.mode / dropout / precision / padding / accumulation / loss: the training protocol
    the parties run (train or eval, dropout rates, autocast dtype, padding side and length,
    micro-batches per step, loss and its reduction);
    capture.clipping.max_norm / per_layer: the protocol's clipping bounds (global / per parameter);
    capture.shares / update: that a file holds a weight update, and the local steps, learning
    rate, mini-batch size and optimiser a server configured (files written by other tools);
    capture.defence: what the defence is, with its parameters (a server knows the noise level
    it asked for, and the learning rate and local steps of a federated update);
    extra.input_shape / normalisation / pixel_range: an image model's input conventions.
private (the victim's own, never in an Observation)
    knowledge: the declared facts reach an attack only as `Observation.knowledge`, after the
    facts the user withdrew (`recover(unknown=...)`) are gone;
    capture.victim: the masking seed and probability, the loss value, where labels came from,
    the training step, notes; capture.clipping.clipped: whether this step hit the bound;
    capture.source, versions, created, format.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .errors import InputError

#: knowledge fields a user may withdraw from the attacker (`--unknown labels`).
WITHDRAWABLE = ("seq_lengths", "labels", "mask_positions", "batch_size")


@dataclass(frozen=True)
class Knowledge:
    """What the attacker is assumed to know besides the gradient and the model.

    batch_size: number of examples that produced the gradient.
    seq_lengths: token count of each example, special tokens included (text).
    labels: the true class of each example (classification) or masked token ids (MLM).
    mask_positions: for masked-LM, the positions of each example that carry a label.
    special_tokens: the tokenizer's template ([CLS] first, [SEP] last, [PAD] after) is public.
    """

    batch_size: int | None = None
    seq_lengths: tuple[int, ...] | None = None
    labels: tuple[Any, ...] | None = None
    mask_positions: tuple[tuple[int, ...], ...] | None = None
    special_tokens: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Knowledge":
        """From plain JSON values, checked whole (types, ranges, sizes): one-line InputError."""
        from .io import jsonable
        from .schema import check, check_knowledge, knowledge_schema

        data = json.loads(json.dumps(dict(data), default=jsonable)) if isinstance(data, Mapping) else data
        check(data, knowledge_schema(), "knowledge")
        check_knowledge(data, {}, "knowledge")
        clean = dict(data)
        for key in ("seq_lengths", "labels"):
            if clean.get(key) is not None:
                clean[key] = tuple(_freeze(v) for v in clean[key])
        if clean.get("mask_positions") is not None:
            clean["mask_positions"] = tuple(tuple(p) for p in clean["mask_positions"])
        return cls(**clean)

    def without(self, *names: str) -> "Knowledge":
        """The same knowledge with some facts withdrawn (the attacker must infer them)."""
        bad = [n for n in names if n not in WITHDRAWABLE]
        if bad:
            raise InputError(
                f"cannot withdraw {', '.join(bad)}; withdrawable: {', '.join(WITHDRAWABLE)}"
            )
        return replace(self, **{n: None for n in names})

    def describe(self) -> list[str]:
        return [k for k, v in self.to_dict().items() if v not in (None, False)]


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


#: The metadata an attacker sees, named field by field (True: the whole value); see the module doc.
PUBLIC_METADATA: dict[str, Any] = {
    "modality": True,
    "model": True,
    "capture": {"mode": True, "dropout": True, "precision": True, "padding": True, "accumulation": True,
                "loss": True, "defence": True, "clipping": {"max_norm": True, "per_layer": True},
                "shares": True, "update": True},
    "extra": {"input_shape": True, "normalisation": True, "pixel_range": True},
}


def public_metadata(metadata: Mapping[str, Any], schema: Mapping[str, Any] = PUBLIC_METADATA) -> dict[str, Any]:
    """A new dict holding only the fields `schema` names (deep copies: nothing links back)."""
    view: dict[str, Any] = {}
    for key, part in schema.items():
        if key not in metadata:
            continue
        value = metadata[key]
        if part is True:
            view[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping):
            view[key] = public_metadata(value, part)
    return view


@dataclass(frozen=True)
class Observation:
    """Everything an attack may read: gradients by parameter name, the public metadata
    (`PUBLIC_METADATA`), and the declared knowledge.

    Whatever mapping is passed as `metadata`, the Observation keeps only its public fields, so
    `Observation(g, gradient_file.metadata, knowledge)` is as safe as `Observation.from_file`.
    """

    gradients: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any]
    knowledge: Knowledge

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", public_metadata(self.metadata))

    @classmethod
    def from_file(cls, gradients: Any, *, unknown: Iterable[str] = (), device: Any = None) -> "Observation":
        """The attacker's view of a `GradientFile`: its tensors (moved to `device` when given), its
        public metadata, and its declared knowledge less the `unknown` facts."""
        knowledge = Knowledge.from_dict(gradients.metadata["knowledge"]).without(*unknown)
        tensors = {n: (g if device is None else g.to(device)) for n, g in gradients.gradients.items()}
        return cls(tensors, gradients.metadata, knowledge)

    def with_knowledge(self, knowledge: Knowledge) -> "Observation":
        return replace(self, knowledge=knowledge)

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    @property
    def task(self) -> str:
        return self.metadata["model"]["task"]

    @property
    def defence(self) -> dict[str, Any] | None:
        """What the victim's defence is (`Defence.describe()`), or None for a plain gradient."""
        return self.metadata.get("capture", {}).get("defence")


@dataclass
class Reference:
    """Ground truth of a captured batch; read by scoring only.

    texts / token_ids / labels for text (token_ids are the unmasked inputs, specials included);
    images (list of CHW float arrays in [0, 1]) and labels for images.
    """

    modality: str
    labels: list[Any] = field(default_factory=list)
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    masked_input_ids: list[list[int]] | None = None
    images: list[Any] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.images is not None:
            data["images"] = [torch.as_tensor(im).tolist() for im in self.images]
        return data

    def to_json(self) -> str:
        from .io import dumps

        return dumps({"format": "textleak.reference", "version": 1, **self.to_dict()})

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        from .io import write_output

        text = self.to_json()
        write_output(path, "reference", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                     overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        """A reference JSON, checked whole (no missing or unknown field, right types)."""
        from .io import read_text
        from .schema import REFERENCE, check, parse_json

        data = parse_json(read_text(path, "reference file"), f"reference file {path}", limit=2**30)
        if not isinstance(data, dict) or data.get("format") != "textleak.reference":
            raise InputError(f"{path} is not a textleak reference file")
        check(data, REFERENCE, "reference", source=str(path))
        data.pop("format"), data.pop("version", None)
        return cls(**data)
