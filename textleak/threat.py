"""The threat model as types.

An attack receives an `Observation`: the shared gradients, the public description of the model
and what the attacker is *declared* to know (`Knowledge`). The private batch lives in a
`Reference`, which only scoring reads; attacks never receive one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

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


@dataclass(frozen=True)
class Observation:
    """Everything an attack may read: gradients by parameter name, metadata, knowledge."""

    gradients: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any]
    knowledge: Knowledge

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    @property
    def task(self) -> str:
        return self.metadata["model"]["task"]


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
