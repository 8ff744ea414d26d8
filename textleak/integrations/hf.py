"""A transformers `TrainerCallback` that records what a training step would share.

At each chosen optimiser step it writes, under `out_dir/step-<N>/`:
    grads.pt               the gradient after clipping and before the optimiser step (what a
                           data-parallel or federated peer would see), with metadata
    grads.reference.json   the batch that produced it (ground truth, for scoring only)
    model/                 the weights at that step, so `textleak recover --grads .../grads.pt`
                           rebuilds exactly the model the gradient came from

The batch is read with a forward pre-hook on the model (the Trainer does not hand inputs to
callbacks); with gradient accumulation, every micro-batch of the step is recorded. The capture is
assembled by the builder every victim uses (`textleak.capturing`), with the Trainer's settings
as the step's protocol (train mode, `max_grad_norm`, fp16/bf16, gradient accumulation). The
callback works wherever the Trainer puts the model (CPU or CUDA); gradients are saved on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from transformers import TrainerCallback

from ..capturing import (DEFAULT_DECLARED, CaptureBuilder, TrainingStep, check_declared, dropout_rates, text_facts,
                         text_reference)
from ..defences.training import apply_to_model_grads
from ..gradients import check_finite
from ..text.models import target_from_model


class GradientCaptureCallback(TrainerCallback):
    """Write the gradients of chosen optimiser steps (1-based, as `state.global_step` after it).

    steps: step numbers to capture, or a predicate on the step number.
    tokenizer: decodes the recorded batch into reference text.
    defence: optional defence (a spec such as "noise:1e-3" or a `textleak.defences` object); it is
        applied to the gradient the optimiser uses, so the capture shows what a defended run shares.
    save_model: also save the weights of each captured step (needed to attack it later).
    """

    def __init__(self, out_dir: str | Path, steps: Iterable[int] | Callable[[int], bool] = (1,), *,
                 tokenizer: Any = None, declare: Iterable[str] = DEFAULT_DECLARED, defence: Any = None,
                 save_model: bool = True, seed: int = 0):
        self.out_dir = Path(out_dir)
        self.wanted = steps if callable(steps) else set(steps).__contains__
        self.tokenizer = tokenizer
        self.declare = check_declared(declare)
        self.defence = defence
        self.save_model = save_model
        self.generator = torch.Generator().manual_seed(seed)
        self.written: list[Path] = []
        self._inputs: list[dict[str, torch.Tensor]] = []
        self._hook = None

    # -- recording the batch -----------------------------------------------------------
    def _record(self, module, args, kwargs):
        if module.training:
            # Batch tensors only: the Trainer also passes scalars such as num_items_in_batch.
            self._inputs.append({k: v.detach().cpu().clone() for k, v in kwargs.items()
                                 if isinstance(v, torch.Tensor) and v.dim() >= 1})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self._inputs = []

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- capturing the gradient ----------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        wanted = self.wanted(step)
        clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
        clipped = _at_bound(model, clip) if wanted else None  # before a defence changes the norm
        if self.defence is not None:
            examples = sum(x["input_ids"].shape[0] for x in self._inputs if "input_ids" in x)
            self.defence = apply_to_model_grads(model, self.defence, self.generator, examples=examples)
        if not wanted:
            return
        grads = {n: p.grad.detach().clone().cpu() for n, p in model.named_parameters() if p.grad is not None}
        check_finite(grads, source=f"the gradient of step {step}")
        side = "left" if any(_padding_side(x["attention_mask"]) == "left" for x in self._inputs
                             if "attention_mask" in x) else "right"
        self._write(step, grads, model, TrainingStep(
            mode="train", clip=clip, accumulation=args.gradient_accumulation_steps, pad_side=side,
            precision="bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"), clipped)

    def _write(self, step: int, grads: dict[str, torch.Tensor], model, protocol: TrainingStep,
               clipped: bool | None) -> None:
        folder = self.out_dir / f"step-{step}"
        batch = _concat(self._inputs)
        task = "classify" if "SequenceClassification" in type(model).__name__ else "mlm"
        target = target_from_model(model, self.tokenizer, task=task, name=str((folder / "model").resolve()),
                                   head_seed=0)
        attention = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        facts, original = text_facts(batch["input_ids"], attention, batch.get("labels"), task)
        builder = CaptureBuilder(
            "text", "transformers.Trainer", target.spec.to_dict(), facts, declare=self.declare, step=protocol,
            dropout=dropout_rates(model), clipped=clipped, defence=self.defence,
            # the collator's padding as the batch shows it: the side, each micro-batch's padded length
            padding={"side": protocol.pad_side, "length": int(attention.shape[1]),
                     "lengths": [int(x["input_ids"].shape[1]) for x in self._inputs], "to": None, "multiple": None},
            micro_batches=[int(x["input_ids"].shape[0]) for x in self._inputs] if len(self._inputs) > 1 else None,
            victim={"step": step, "note": "after clipping, before the optimiser step; with accumulation the "
                    "gradient sums the micro-batches' losses as the Trainer normalises them"})
        reference = text_reference(original, batch["input_ids"], attention, facts.get("labels", []), None,
                                   self.tokenizer)
        if self.save_model:
            model.save_pretrained(folder / "model")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(folder / "model")
        path = folder / "grads.pt"
        builder.build(grads, reference).save(path)
        self.written.append(path)


def _at_bound(model: torch.nn.Module, clip: float | None) -> bool | None:
    """Whether the Trainer's clipping scaled this step: its global gradient norm sits at the bound."""
    if clip is None:
        return None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = float(torch.sqrt(sum(g.detach().double().pow(2).sum() for g in grads)))
    return norm >= clip * (1 - 1e-4)


def _padding_side(attention: torch.Tensor) -> str:
    """"left" when some row's padding comes first (the tokenizer's padding_side), else "right"."""
    return "left" if bool((attention[:, 0] == 0).any()) else "right"


def _concat(inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Micro-batches of one step as one batch, padded to the longest on the side they were."""
    if not inputs:
        raise RuntimeError("no training forward pass was recorded for this step")
    width = max(x["input_ids"].shape[1] for x in inputs)
    pads = {"labels": -100}
    out: dict[str, torch.Tensor] = {}
    for key in inputs[0]:
        parts = []
        for x in inputs:
            t = x[key]
            if t.dim() == 2 and t.shape[1] < width:
                left = "attention_mask" in x and _padding_side(x["attention_mask"]) == "left"
                extra = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
                t = torch.nn.functional.pad(t, extra, value=pads.get(key, 0))
            parts.append(t)
        out[key] = torch.cat(parts)
    return out
