"""Defences inside a training loop: apply one to the `.grad` of a model's parameters in place.

A transformers `TrainerCallback.on_pre_optimizer_step(args, state, control, model=..., **kw)`
can call `apply_to_model_grads(model, defence, generator)`; a hand-written loop calls it between
`loss.backward()` and `optimizer.step()`. Only gradient-stage defences (noise, laplace, prune,
fp16, bf16, int8) act on a finished `.grad`; DP-SGD acts on one example's gradient, so it is
accepted with `examples=1` only (per-example clipping of a batch mean is not DP-SGD).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .base import Defence, parse_defence


def apply_to_model_grads(model: torch.nn.Module, defence: "Defence | str", generator: torch.Generator,
                         *, examples: int = 1) -> Defence:
    """Replace each trainable parameter's .grad by the defended one; returns the parsed defence."""
    defence = parse_defence(defence)
    if defence.stage == "capture" and not (defence.per_example and examples == 1):
        raise InputError(
            f"defence {defence.spec} needs the batch itself ({'per-example gradients' if defence.per_example else 'local steps'}); "
            "a .grad of a batch mean cannot be defended this way: use per-device batches of one "
            "(DP-SGD) or textleak.defences.shared_gradients")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    defended = defence.apply({n: p.grad for n, p in named}, generator)
    with torch.no_grad():
        for n, p in named:
            p.grad.copy_(defended[n])
    return defence
