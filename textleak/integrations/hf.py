"""A transformers `TrainerCallback` that records what a training step would share.

At each chosen optimiser step it writes, under `out_dir/step-<N>/`:
    grads.pt               the gradient after clipping and before the optimiser step (what a
                           data-parallel or federated peer would see), with metadata
    grads.reference.json   the batch that produced it (ground truth, for scoring only)
    model/                 the weights at that step, so `textleak recover --grads .../grads.pt`
                           rebuilds exactly the model the gradient came from

The batch is read with a forward pre-hook on the model (the Trainer does not hand inputs to
callbacks); with gradient accumulation, every micro-batch of the step is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from transformers import TrainerCallback

from ..capture import DEFAULT_DECLARED, declared_knowledge, metadata_for
from ..defences.training import apply_to_model_grads
from ..gradients import GradientFile, check_finite
from ..text.models import target_from_model
from ..threat import Reference
from ..training import dropout_rates


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
        self.declare = tuple(declare)
        self.defence = defence
        self.save_model = save_model
        self.generator = torch.Generator().manual_seed(seed)
        self.written: list[Path] = []
        self._inputs: list[dict[str, torch.Tensor]] = []
        self._hook = None
        self._precision, self._dropout, self._mode = "fp32", {}, "train"

    # -- recording the batch -----------------------------------------------------------
    def _record(self, module, args, kwargs):
        if module.training:
            # Batch tensors only: the Trainer also passes scalars such as num_items_in_batch.
            self._inputs.append({k: v.detach().cpu().clone() for k, v in kwargs.items()
                                 if isinstance(v, torch.Tensor) and v.dim() >= 1})

    def _precision_seen(self, module, args):
        # inside the forward: the Trainer's autocast wraps the model's forward, not its hooks
        if module.training:
            self._precision = autocast_precision()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook = [model.register_forward_pre_hook(self._record, with_kwargs=True),
                      model.get_input_embeddings().register_forward_pre_hook(self._precision_seen)]

    def on_step_begin(self, args, state, control, **kwargs):
        self._inputs = []

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self._hook or ():
            hook.remove()
        self._hook = None

    # -- capturing the gradient ----------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        if self.defence is not None:
            examples = sum(x["input_ids"].shape[0] for x in self._inputs if "input_ids" in x)
            self.defence = apply_to_model_grads(model, self.defence, self.generator, examples=examples)
        grads = {n: p.grad.detach().clone().cpu() for n, p in model.named_parameters() if p.grad is not None}
        if not self.wanted(step):
            return
        self._dropout = dropout_rates(model) if model.training else {}
        self._mode = "train" if model.training else "eval"
        check_finite(grads, source=f"the gradient of step {step}")
        self._write(step, grads, model, args)

    def _write(self, step: int, grads: dict[str, torch.Tensor], model, args) -> None:
        folder = self.out_dir / f"step-{step}"
        batch = _concat(self._inputs)
        task = "classify" if "SequenceClassification" in type(model).__name__ else "mlm"
        target = target_from_model(model, self.tokenizer, task=task, name=str((folder / "model").resolve()),
                                   head_seed=0)
        attn = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        lengths = attn.sum(1).tolist()
        labels = batch.get("labels")
        facts: dict[str, Any] = {"batch_size": len(lengths), "seq_lengths": lengths}
        original = batch["input_ids"].clone()
        if task == "mlm" and labels is not None:
            labelled = labels != -100
            original = torch.where(labelled, labels, original)
            facts["mask_positions"] = [row.nonzero().flatten().tolist() for row in labelled]
            facts["labels"] = [[int(labels[b, p]) for p in pos] for b, pos in enumerate(facts["mask_positions"])]
        elif labels is not None:
            facts["labels"] = labels.tolist()
        knowledge = declared_knowledge(facts, [d for d in self.declare if d in facts])
        meta = metadata_for(
            modality="text", spec=target.spec.to_dict(), knowledge=knowledge,
            capture={"source": "transformers.Trainer", "step": step, "mode": f"{self._mode} (dropout {'on' if any(self._dropout.values()) else 'off'})",
                     "gradient_accumulation_steps": args.gradient_accumulation_steps,
                     "max_grad_norm": args.max_grad_norm,
                     "note": "after clipping, before the optimiser step; with accumulation the gradient "
                             "sums the micro-batches' losses as the Trainer normalises them",
                     "training": self._settings(grads, args, attn),
                     **({"defence": self.defence.describe()} if self.defence is not None else {})})
        kept = attn.bool()  # left padding puts the tokens at the end of each row
        tokens = [original[b][kept[b]].tolist() for b in range(len(lengths))]
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in tokens] \
            if self.tokenizer is not None else None
        reference = Reference(modality="text", texts=texts, labels=facts.get("labels", []), token_ids=tokens,
                              masked_input_ids=[batch["input_ids"][b][kept[b]].tolist() for b in range(len(lengths))])
        if self.save_model:
            model.save_pretrained(folder / "model")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(folder / "model")
        path = folder / "grads.pt"
        GradientFile(grads, meta).save(path)
        reference.save(folder / "grads.reference.json")
        self.written.append(path)


    def _settings(self, grads: dict[str, torch.Tensor], args, attn: torch.Tensor) -> dict[str, Any]:
        """What the attacker must know about how this step was taken (`textleak.training`)."""
        norm = float(sum(g.double().pow(2).sum() for g in grads.values()) ** 0.5)
        clip = None
        if args.max_grad_norm and args.max_grad_norm > 0:
            # clipping scales the gradient to exactly max_grad_norm: a norm below it was left alone
            clip = {"max_norm": float(args.max_grad_norm), "per": "global",
                    "clipped": abs(norm - args.max_grad_norm) <= 1e-3 * args.max_grad_norm}
        widths = [x["input_ids"].shape[1] for x in self._inputs]
        left = bool((attn[:, 0] == 0).any())
        return {"mode": self._mode, "dropout": self._dropout, "clip": clip, "precision": self._precision,
                "padding": {"side": "left" if left else "right", "widths": widths,
                            "longest": int(attn.sum(1).max())},
                "accumulation": int(args.gradient_accumulation_steps), "micro_batches": len(self._inputs),
                "shared_norm": norm}


def autocast_precision() -> str:
    """The precision autocast runs the forward in right now: "bf16", "fp16" or "fp32" (off)."""
    for device in ("cuda", "cpu"):
        try:
            if torch.is_autocast_enabled(device):
                dtype = torch.get_autocast_dtype(device)
                return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        except (RuntimeError, TypeError):
            continue
    return "fp32"


def _concat(inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Micro-batches of one step as one batch, right-padded to the longest."""
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
                t = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pads.get(key, 0))
            parts.append(t)
        out[key] = torch.cat(parts)
    return out
