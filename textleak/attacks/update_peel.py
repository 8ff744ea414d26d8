"""Peeling found sentences off a FedAvg update by re-simulating their share of it (`exact-update`).

A plain gradient is a sum of per-sentence gradients, so a found sentence's own gradient comes
out of it exactly (`exact.peeling.Peeler`). An update U = (1/K) sum_k g(w_k) is not: each term is
taken at a point of the client's trajectory, which every sentence of the batch moved. But the
server has the trajectory to first order, w_k ~ w0 - k lr U, and along it the found sentences'
share of U,

    S = (1/K) sum_k (1/B) sum_{found b} g_b(w0 - k lr U),

can be replayed. U - S leaves the missing sentences' share plus what the linear trajectory misses
(measured on MiniLM, RT dev batch 4, K = 4, lr 1e-2, three of four sentences subtracted: the
rest's layer-1 spectrum sits at 2e-3..5e-3 of its top past the missing sentence's 38 tokens, the
missing sentence's per-token squared residual against that span 7.9e-4, the found sentences'
0.47-0.60). That is no certificate (the subtraction is not exact, so no rank drops exactly: the
simulation of the whole batch, `update_sim.certify_batch`, remains the certificate), but it is a
narrowing: the search goes on against the layer-1 span of what is left, where the found sentences
no longer attract its seeds (a second sentence of a found one's length was otherwise never
found: every seed settled back into the found one).

Each sentence is subtracted under the label (class) that leaves the least behind past the rank of
what is missing (the energy outside the best approximation of that rank). Classification only;
duck-typed as the `Peeler` the search and its peel certificate use (`working`, `peel`, `labels`, `sentences`, `slots`, `fitted`).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from ..text.layouts import Layout
from ..text.leaks import padded
from ..text.leaks.noise import span_of
from ..text.leaks.scale import stacked
from .exact.peeling import Rest
from .update_sim import UpdateFacts


class UpdatePeeler:
    """Subtracts each found sentence's replayed share of the update (see the module doc).

    layout: the model at w0 (the trajectory starts there); update: U keyed by parameter name;
    lengths: the batch's sentence lengths."""

    working = True

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lengths: Sequence[int],
                 facts: UpdateFacts):
        self.facts, self.update, self.lengths, self.layout = facts, update, list(lengths), layout
        self.names = layout.shared(update, layout.qkv_names(1))
        self.names0 = layout.shared(update, layout.qkv_names(0))
        self.classes = int(layout.model.config.num_labels)
        self.model = copy.deepcopy(layout.model).eval()
        self.params = dict(self.model.named_parameters())
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.device = next(self.model.parameters()).device
        self.rest = {n: update[n].to(self.device).double().clone() for n in self.names}
        self.labels: list[Any] = []
        self.sentences: list[list[int]] = []
        self.slots: list[int] = []
        self.fitted: list[float] = []  # no share is fitted: labels take the batch's mean-loss scale

    def share(self, seq: Sequence[int], label: int) -> dict[str, torch.Tensor]:
        """(1/(B K)) sum_k g_seq(w0 - k lr U) on the layer-1 Q/K/V weights, in double."""
        ids, mask = padded([list(seq)], self.device)
        y = torch.tensor([label], device=self.device)
        K, lr, B = self.facts.steps, self.facts.lr, len(self.lengths)
        out = {n: torch.zeros_like(self.rest[n]) for n in self.names}
        wanted = [self.params[n] for n in self.names]
        try:
            for k in range(K):
                with torch.no_grad():
                    for n, p in self.params.items():
                        p.copy_(self.start[n] - (k * lr) * self.update[n].to(p.device, p.dtype)
                                if n in self.update else self.start[n])
                with torch.enable_grad():
                    loss = self.model(**self.layout.inputs(ids, mask), labels=y).loss
                    grads = torch.autograd.grad(loss, wanted)
                for n, g in zip(self.names, grads):
                    out[n] += g.double() / (B * K)
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.start[n])
        return out

    def _left(self, seq: Sequence[int]) -> list[int]:
        left = list(self.lengths)
        for s in [*self.sentences, seq]:
            if len(s) in left:
                left.remove(len(s))
        return left

    def peel(self, seq: list[int], last: bool = False) -> Rest:
        """Take `seq` out under its likeliest label; the layer-1 span of what is left (None when
        nothing is)."""
        left = self._left(seq)
        bound = sum(left)
        best = None
        for label in range(self.classes):
            own = self.share(seq, label)
            trial = {n: self.rest[n] - own[n] for n in self.names}
            # what the best rank-`bound` approximation of what is left leaves out (all of it when nothing is left)
            tail = torch.linalg.svdvals(stacked(trial, self.names))[bound:]
            score = float(tail.pow(2).sum())
            if best is None or score < best[0]:
                best = (score, label, trial)
        _, label, self.rest = best
        span = None if last or not bound else span_of(stacked(self.rest, self.names), 1,
                                                      rank_bound=bound, keep_bound=True)
        self.labels.append(label)
        self.sentences.append(list(seq))
        return Rest(span1=span)
