"""The victim side: the gradient a training step would share, and its ground truth kept apart.

`capture_gradients` returns a `Capture`: a `GradientFile` (what is shared, plus the declared
knowledge) and a `Reference` (the private batch, for scoring only). `Capture.save(path)` writes
them to `path` and `<stem>.reference.json` beside it.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .core.seeding import determinism_settings, model_mode
from .errors import InputError
from .gradients import GradientFile, check_finite
from .threat import Knowledge, Reference
from .versions import versions

DECLARABLE = ("batch_size", "seq_lengths", "labels", "mask_positions")
DEFAULT_DECLARED = ("batch_size", "seq_lengths", "mask_positions")


@dataclass
class Capture:
    gradients: GradientFile
    reference: Reference

    def save(self, path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        ref_path = reference_path(path)
        self.gradients.save(path)
        self.reference.save(ref_path)
        return path, ref_path


def reference_path(grads_path: str | Path) -> Path:
    p = Path(grads_path)
    return p.with_name(p.stem + ".reference.json")


def parameter_gradients(loss: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """d loss / d parameter for every trainable parameter, leaving the model's .grad untouched."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g.detach().clone() for (n, _), g in zip(named, grads) if g is not None}


def metadata_for(*, modality: str, spec: Mapping[str, Any], knowledge: Knowledge,
                 capture: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = {"modality": modality, "model": dict(spec), "knowledge": knowledge.to_dict(),
            # the victim's thread count and kernels decide the gradient's last bits, as they do a result's
            "capture": {**capture, "determinism": determinism_settings(capture.get("seed"))},
            "extra": dict(extra or {}), "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    # The same plain-JSON values in memory as after a save/load round trip.
    return json.loads(json.dumps(meta))


def declared_knowledge(facts: Mapping[str, Any], declare: Iterable[str]) -> Knowledge:
    declare = tuple(declare)
    bad = [d for d in declare if d not in DECLARABLE]
    if bad:
        raise InputError(f"cannot declare {bad[0]!r}; declarable: {', '.join(DECLARABLE)}")
    return Knowledge.from_dict({k: v for k, v in facts.items() if k in declare})


def capture_gradients(model: Any = None, batch: Sequence[str] | None = None, *,
                      tokenizer: Any = None, task: str | None = None,
                      labels: Sequence[int] | None = None, mask_prob: float = 0.15,
                      num_labels: int = 2, seed: int = 0, head_seed: int = 0,
                      declare: Iterable[str] = DEFAULT_DECLARED, defence: Any = None) -> Capture:
    """Gradient of one training step on `batch` (a list of sentences).

    model: a model name or folder (None: the packaged MiniLM), a `TextTarget`, or an HF model
        object (then pass `tokenizer`). task: "mlm" or "classify" (inferred from a model object).
    labels: one class per sentence (classification). mask_prob: BERT masking rate (masked-LM).
    seed: drives the masking. head_seed: initialises heads missing from the checkpoint.
    declare: which facts the attacker is assumed to know (see `threat.Knowledge`).
    defence: a spec such as "noise:1e-3" or a `textleak.defences.Defence` applied to what is
        shared (recorded under the metadata's `capture.defence`); None shares the plain gradient.
    """
    from .text.batch import build_batch
    from .text.models import TextTarget, load_text_model, target_from_model

    if batch is None:
        raise InputError("no text given")
    if isinstance(batch, str):
        batch = [batch]
    if isinstance(model, TextTarget):
        target = model
    elif model is None or isinstance(model, (str, Path)):
        target = load_text_model(None if model is None else str(model), task=task or "mlm",
                                 num_labels=num_labels, head_seed=head_seed)
    else:
        if tokenizer is None:
            raise InputError("pass the tokenizer with a model object")
        target = target_from_model(model, tokenizer, task=task)
    task = target.spec.task
    gen = torch.Generator().manual_seed(seed)
    tb = build_batch(target.tokenizer, batch, task=task, labels=labels,
                     num_labels=target.spec.num_labels, mask_prob=mask_prob,
                     max_positions=target.max_positions, generator=gen)
    if defence is not None:
        from .defences import parse_defence

        defence = parse_defence(defence)
    with model_mode(target.model, train=False), torch.enable_grad():
        loss = target.model(**tb.model_inputs(), labels=tb.labels).loss
        if defence is None:
            grads = parameter_gradients(loss, target.model)
        else:
            from .defences import shared_gradients

            def loss_of(rows: Sequence[int]) -> torch.Tensor:
                inputs = {k: v[list(rows)] for k, v in tb.model_inputs().items()}
                return target.model(**inputs, labels=tb.labels[list(rows)]).loss

            grads = shared_gradients(defence, target.model, loss_of, len(tb.lengths),
                                     torch.Generator().manual_seed(seed))
    check_finite(grads, source="the captured gradient")
    if task == "classify":
        true_labels: list[Any] = tb.labels.tolist()
    else:
        true_labels = [[int(tb.original_ids[b, p]) for p in pos] for b, pos in enumerate(tb.mask_positions)]
    facts = {"batch_size": len(tb.lengths), "seq_lengths": tb.lengths, "labels": true_labels,
             "mask_positions": tb.mask_positions}
    knowledge = declared_knowledge(facts, declare if task == "mlm" else
                                   [d for d in declare if d != "mask_positions"])
    meta = metadata_for(
        modality="text", spec=target.spec.to_dict(), knowledge=knowledge,
        capture={"source": "capture_gradients", "loss": "HF mean cross-entropy",
                 "mode": "eval (dropout off)", "seed": seed, "mask_prob": mask_prob if task == "mlm" else None,
                 "loss_value": float(loss.detach()),
                 **({"defence": defence.describe()} if defence is not None else {})})
    reference = Reference(
        modality="text", texts=list(batch), labels=true_labels,
        token_ids=[tb.original_ids[b, :n].tolist() for b, n in enumerate(tb.lengths)],
        masked_input_ids=[tb.input_ids[b, :n].tolist() for b, n in enumerate(tb.lengths)])
    return Capture(GradientFile(grads, meta), reference)
