"""The victim side: the gradient a training step would share, and its ground truth kept apart.

`capture_gradients` returns a `Capture`: a `GradientFile` (what is shared, plus the declared
knowledge) and a `Reference` (the private batch, for scoring only). `Capture.save(path)` writes
them to `path` and `<stem>.reference.json` beside it. The capture is assembled by the one
builder every victim uses (`textleak.capturing`), which also documents the metadata it records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .capturing import (DEFAULT_DECLARED, CaptureBuilder, TrainingStep, check_declared, concat_rows, dropout_rates,
                        micro_batches, step_gradients, text_facts, text_reference)
from .capturing import DECLARABLE, declared_knowledge, parameter_gradients  # noqa: F401  (their old home)
from .core.device import on_device, resolve_device
from .errors import InputError
from .gradients import GradientFile
from .threat import Reference


@dataclass
class Capture:
    gradients: GradientFile
    reference: Reference

    def save(self, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write the gradient file and `<stem>.reference.json` beside it, both or neither."""
        from .io import as_path, check_outputs, write_files

        path = as_path(path, "gradient file")
        ref_path = reference_path(path)
        check_outputs([(path, "gradients", "gradient file"), (ref_path, "reference", "reference file")],
                      overwrite=overwrite, folders_exist=False)
        write_files(self.staged(path))
        return path, ref_path

    def staged(self, path: Path) -> list:
        """(path, writer) of both files, for `textleak.io.write_files` (validated first)."""
        from .gradients import gradient_writer

        text = self.reference.to_json()
        return [(path, gradient_writer(path, self.gradients)),
                (reference_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))]


def reference_path(grads_path: str | Path) -> Path:
    p = Path(grads_path)
    return p.with_name(p.stem + ".reference.json")


def _parsed_defence(defence: Any) -> Any:
    """A defence spec ("noise:1e-3") or object parsed; None stays None (the plain gradient)."""
    if defence is None:
        return None
    from .defences import parse_defence

    return parse_defence(defence)


def capture_gradients(model: Any = None, batch: Sequence[str] | None = None, *,
                      tokenizer: Any = None, task: str | None = None,
                      labels: Sequence[int] | None = None, mask_prob: float = 0.15,
                      num_labels: int = 2, seed: int = 0, head_seed: int = 0,
                      declare: Iterable[str] = DEFAULT_DECLARED, defence: Any = None,
                      step: TrainingStep | None = None, device: Any = "auto") -> Capture:
    """Gradient of one training step on `batch` (a list of sentences).

    model: a model name or folder (None: the packaged MiniLM), a `TextTarget`, or an HF model
        object (then pass `tokenizer`). task: "mlm" or "classify" (inferred from a model object).
    labels: one class per sentence (classification; ignored for masked-LM, whose labels are the masked
        tokens). mask_prob: BERT masking rate (masked-LM).
    seed: drives the masking. head_seed: initialises heads missing from the checkpoint.
    declare: which facts the attacker is assumed to know (see `threat.Knowledge`).
    defence: a spec such as "noise:1e-3" or a `textleak.defences.Defence` applied to what is
        shared (recorded under the metadata's `capture.defence`); None shares the plain gradient.
    step: the training protocol (`TrainingStep`: mode, precision, clipping, padding side, length
        and multiple, accumulation over micro-batches); default eval mode, float32, unclipped, one
        batch padded on the right to its longest sentence.
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N": where the step runs (the
        model is moved there for the step and back); the gradients are returned on the CPU.
    """
    from .validate import integer, labels as check_labels, probability, texts

    batch = texts(batch)
    labels = check_labels(labels)
    mask_prob = probability(mask_prob, "mask_prob")
    seed = integer(seed, "seed")
    step = step or TrainingStep()
    check_declared(declare)
    device = resolve_device(device)
    target = _text_target(model, tokenizer, task, num_labels, head_seed)
    task = target.spec.task
    if task == "classify" and labels is not None and len(labels) != len(batch):
        raise InputError(f"{len(labels)} labels for {len(batch)} texts")
    micro = micro_batches(len(batch), step.accumulation)
    side = step.pad_side or target.tokenizer.padding_side
    parts = _micro_parts(target, batch, labels, micro, mask_prob=mask_prob, seed=seed, step=step, side=side)
    defence = _parsed_defence(defence)
    loss_of = _accumulated_loss(target.model, micro, parts, device)
    with on_device(target.model, device):
        grads, loss, clipped = step_gradients(target.model, loss_of, len(batch), step=step, defence=defence,
                                              seed=seed)
    pad_id = target.tokenizer.pad_token_id or 0
    ids, attention = (concat_rows([getattr(tb, k) for tb in parts], side, v)
                      for k, v in (("input_ids", pad_id), ("attention_mask", 0)))
    hf_labels = concat_rows([tb.labels for tb in parts], side, -100)
    facts, original = text_facts(ids, attention, hf_labels, task)
    builder = CaptureBuilder(
        "text", "capture_gradients", target.spec.to_dict(), facts,
        declare=declare, step=step, dropout=dropout_rates(target.model), clipped=clipped, defence=defence,
        padding={"side": side, "length": int(ids.shape[1]),
                 "lengths": [int(tb.input_ids.shape[1]) for tb in parts], "to": step.pad_to,
                 "multiple": step.pad_multiple},
        micro_batches=[b - a for a, b in micro] if len(micro) > 1 else None,
        victim={"seed": seed, "mask_prob": mask_prob if task == "mlm" else None, "loss_value": loss})
    reference = text_reference(original, ids, attention, facts.get("labels", []), batch)
    return builder.build(grads, reference)


def _micro_parts(target: Any, batch: Sequence[str], labels: Sequence[int] | None,
                 micro: Sequence[tuple[int, int]], *, mask_prob: float, seed: int, step: TrainingStep,
                 side: str) -> list[Any]:
    """One tokenised batch per micro-batch, masked from one generator seeded with `seed`."""
    from .text.batch import build_batch

    gen = torch.Generator().manual_seed(seed)
    return [build_batch(target.tokenizer, batch[a:b], task=target.spec.task,
                        labels=None if labels is None else labels[a:b], num_labels=target.spec.num_labels,
                        mask_prob=mask_prob, max_positions=target.max_positions, generator=gen,
                        pad_to=step.pad_to, pad_side=side, pad_multiple=step.pad_multiple)
            for a, b in micro]


def _accumulated_loss(model: Any, micro: Sequence[tuple[int, int]], parts: Sequence[Any], device: Any):
    """The loss of any rows of the batch as the Trainer accumulates it: each micro-batch's mean loss over
    its rows, divided by the number of micro-batches (rows index the whole batch; `micro` gives each
    part's [a, b) range)."""
    inputs = [({k: v.to(device) for k, v in tb.model_inputs().items()}, tb.labels.to(device)) for tb in parts]

    def loss_of(rows: Sequence[int]) -> torch.Tensor:
        total = None
        for (a, b), (x, y) in zip(micro, inputs):
            sel = [r - a for r in rows if a <= r < b]
            if sel:
                loss = model(**{k: v[sel] for k, v in x.items()}, labels=y[sel]).loss / len(micro)
                total = loss if total is None else total + loss
        return total

    return loss_of


def _text_target(model: Any, tokenizer: Any, task: str | None, num_labels: int, head_seed: int):
    from .text.models import TextTarget, load_text_model, target_from_model

    if isinstance(model, TextTarget):
        return model
    if model is None or isinstance(model, (str, Path)):
        return load_text_model(None if model is None else str(model), task=task or "mlm",
                               num_labels=num_labels, head_seed=head_seed)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a name, a folder, a TextTarget or a transformers model, got "
                         f"{type(model).__name__} {model!r:.40}")
    if tokenizer is None:
        raise InputError("pass the tokenizer with a model object")
    return target_from_model(model, tokenizer, task=task)
