"""Per-layer weights of the gradient likelihood: a landscape for the `likelihood` search in which
every layer counts, not only the classifier head.

The likelihood term of a hypothesis x, J(x) = 2 <T, g(x)> - ||g(x)||^2 (`attacks.likelihood`), is
a sum over parameter groups k (the embeddings, each encoder layer, the head): J = sum_k J_k. On
MiniLM classification the head's gradient carries ~90% of ||g||^2 (RT dev sentence 0, variance
1e-6: head 5.16, the six layers 0.02-0.20 each, the embeddings 0.03), and the head sees the
sentence only through its pooled [CLS] vector. So J ranks hypotheses almost by one global feature
and its coordinate ascent settles in a basin: from the guess the search settled on, not one of
the 11 single true-token fixes raised J, though the truth stands 0.094 above it.

The weighted term J_w = sum_k J_k / n_k, with n_k = ||g_k||^2 of a reference guess (each group's
fit relative to its own size), keeps the truth where it was (each J_k is largest where g_k = T_k)
but lets the early layers, whose gradients are sums over positions of local terms, speak: from the
same settled guess 3 of the 11 single fixes raise J_w. The search climbs J_w first and J after
(`attacks.likelihood`); only J (the likelihood) picks between guesses.

`GroupScorer` is `text.ghost.GhostScorer` with each module's share of <T, g> and ||g||^2 scaled by
its group's weight, and the unscaled share of each group kept (`parts`), so one pass gives J_w and
every n_k. Groups come from the layout (`text.layouts`): the embeddings (rows and their
LayerNorm), each layer's module, and everything else (pooler, classifier).

Shapes: weights [G] (groups), parts [G, W] (hypotheses) per term.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..text.ghost import GhostScorer, GhostScores
from ..text.layouts import Layout


def groups(layout: Layout) -> dict[torch.nn.Module, int]:
    """Module -> group: 0 the embeddings, 1..n the encoder layers, n + 1 the rest (head)."""
    out: dict[torch.nn.Module, int] = {}
    for m in layout.embeddings.modules():
        out[m] = 0
    for k in range(layout.num_layers):
        for m in layout.layer(k).modules():
            out.setdefault(m, k + 1)
    return out


class GroupScorer(GhostScorer):
    """A GhostScorer whose dot and norm2 are weighted per group (`weights`, None: all 1); `parts`
    holds each group's unweighted (dot, norm2) [G, W] after a call."""

    def __init__(self, layout: Layout, target: Mapping[str, torch.Tensor], weights: torch.Tensor | None = None):
        super().__init__(layout, target)
        self.group = groups(layout)
        self.count = layout.num_layers + 2
        self.weights = weights.double().to(layout.device) if weights is not None else \
            torch.ones(self.count, dtype=torch.float64, device=layout.device)
        self.parts: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor) -> GhostScores:
        W = ids.shape[0]
        self.parts = (torch.zeros(self.count, W, dtype=torch.float64, device=self.layout.device),
                      torch.zeros(self.count, W, dtype=torch.float64, device=self.layout.device))
        return super().__call__(ids, labels)

    def _keep(self, k: int, dot: torch.Tensor, norm2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.parts[0][k] += dot
        self.parts[1][k] += norm2
        return self.weights[k] * dot, self.weights[k] * norm2

    def _module(self, module, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keep(self.group.get(module, self.count - 1), *super()._module(module, x, d))

    def _embeddings(self, ids: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keep(0, *super()._embeddings(ids, e))


def relative_weights(scorer: GroupScorer, seq: list[int], label: int) -> torch.Tensor:
    """[G]: 1 / ||g_k||^2 of `seq` per group (groups without gradient get weight 0), times the
    groups' mean ||g_k||^2: each group weighs in at that mean, so J_w stays on J's scale."""
    scorer(torch.tensor([list(seq)]), torch.tensor([int(label)]))
    n2 = scorer.parts[1][:, 0]
    live = n2 > 0
    w = torch.zeros_like(n2)
    w[live] = 1.0 / n2[live]
    return w * (float(n2[live].sum()) / float(live.sum())) if bool(live.any()) else torch.ones_like(n2)


def name_weights(layout: Layout, weights: torch.Tensor) -> dict[str, float]:
    """Parameter name -> its group's weight (for `attacks.flips`, which differentiates J_w)."""
    out: dict[str, float] = {}
    group = groups(layout)
    for name, module in layout.model.named_modules():
        k = group.get(module, len(weights) - 1)
        for pname, _ in module.named_parameters(recurse=False):
            out.setdefault(f"{name}.{pname}" if name else pname, float(weights[k]))
    return out
