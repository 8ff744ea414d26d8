"""The tensor a party shares for one batch under a defence, from a loss function over examples.

Used by capture (`capture_gradients(..., defence=...)`) and by utility training, so an attacked
gradient and a training step see exactly the same defence code.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import InputError
from .base import BatchGradients, Defence, parse_defence

#: loss_of(indices) -> the training loss of those examples of the batch (a scalar with a graph)
LossOf = Callable[[Sequence[int]], torch.Tensor]


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _grads(loss: torch.Tensor, named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g.detach().clone() for (n, _), g in zip(named, grads) if g is not None}


def batch_gradients(model: torch.nn.Module, loss_of: LossOf, size: int) -> BatchGradients:
    """Gradient sources over a batch of `size` examples; the model's .grad is left untouched."""
    named = trainable(model)
    everyone = list(range(size))

    def batch() -> dict[str, torch.Tensor]:
        return _grads(loss_of(everyone), named)

    def example(i: int) -> dict[str, torch.Tensor]:
        return _grads(loss_of([i]), named)

    def local_update(steps: int, lr: float, minibatch: int | None = None, optimizer: str = "sgd",
                     weight_decay: float = 0.0, schedule: Sequence[Sequence[int]] | None = None
                     ) -> dict[str, torch.Tensor]:
        chunks = [list(c) for c in schedule] if schedule else \
            [everyone[i:i + minibatch] for i in range(0, size, minibatch)] if minibatch else [everyone]
        start = {n: p.detach().clone() for n, p in named}
        saved = {n: p.grad for n, p in named}
        adamw = torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=weight_decay) \
            if optimizer == "adamw" else None
        try:
            for k in range(steps):
                g = _grads(loss_of(chunks[k % len(chunks)]), named)
                with torch.no_grad():
                    for n, p in named:
                        if adamw is not None:
                            p.grad = g.get(n)
                        elif n in g:
                            p.sub_(lr * g[n])
                if adamw is not None:
                    adamw.step()
            with torch.no_grad():
                return {n: (start[n] - p.detach()) / (lr * steps) for n, p in named if n in g}
        finally:
            with torch.no_grad():
                for n, p in named:
                    p.copy_(start[n])
                    p.grad = saved[n]

    return BatchGradients(size, batch, example, local_update)


def shared_gradients(defence: "Defence | str | None", model: torch.nn.Module, loss_of: LossOf, size: int,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What the victim shares for this batch under `defence` (None or "none": the plain gradient)."""
    defence = parse_defence(defence)
    need = defence.required_batch_size()
    if need is not None and need != size:
        raise InputError(f"defence {defence.spec} shares batches of {need} examples; this batch has {size}")
    return defence.share(batch_gradients(model, loss_of, size), generator)
