"""The exchanges of the batch search (`likelihood_batch`): same-position (or, with `block` > 1, same-span) swaps of
tokens between two sentences, each kept only if it raises the likelihood of the whole batch; `Exchanges`, a mixin of
`BatchLikelihoodSearch` (its `block` and `swaps` arguments), with `_gain`, the exact change of the batch
log-likelihood (times 2 sigma^2) when one sentence's guess changes and the others stay."""

from __future__ import annotations

import torch

from ..core.budget import current
from ..text.ghost import GhostScorer
from .likelihood_state import _J, _Batch


class Exchanges:
    """Same-position swaps between sentences (`likelihood_batch`'s module docstring, "Exchanges")."""

    block: int
    swaps: int

    @staticmethod
    def _gain(batch: _Batch, i: int, trials: list[list[int]]) -> list[float]:
        """J_i of each trial for sentence i minus J_i of its current guess: the change of the batch's
        log-likelihood times 2 sigma^2 (a positive factor)."""
        scorer = GhostScorer(batch.layout, batch.target(i))
        ids = torch.tensor([list(batch.seqs[i])] + [list(t) for t in trials])
        J = _J(scorer(ids, torch.full((len(trials) + 1,), batch.labels[i])), batch.clip)
        return (J[1:] - J[0]).tolist()

    def _exchange(self, batch: _Batch, inner: list[range], fill: list[int], strong: set[int]) -> int:
        """Same-position swaps between sentences (see the module docstring); how many were kept."""
        moved, B = 0, len(batch.seqs)
        for i in range(B):
            for j in range(i + 1, B):
                moved += self._swap_pair(batch, i, j, inner, fill, strong)
                if current().expired():
                    return moved
        return moved

    def _swap_pair(self, batch: _Batch, i: int, j: int, inner: list[range], fill: list[int], strong: set[int]) -> int:
        """Tokens at positions a..a+w-1 (w up to `block`) of sentences i and j exchanged: the first
        step (j's tokens into i) scored for every shared span in one pass, the `swaps` best completed
        by the second (i's tokens into j) and kept only if the two together raise the batch likelihood."""
        xi, xj = batch.seqs[i], batch.seqs[j]
        ok = [p for p in inner[i] if p in inner[j]]
        movable = {p for p in ok if xi[p] != xj[p] and (xi[p] in strong or xj[p] in strong
                                                        or (xi[p] not in fill and xj[p] not in fill))}
        spans = [(a, w) for w in range(1, max(1, self.block) + 1) for a in ok
                 if all(a + k in ok for k in range(w)) and any(a + k in movable for k in range(w))]
        if not spans:
            return 0
        trials = []
        for a, w in spans:
            t = list(xi)
            t[a:a + w] = xj[a:a + w]
            trials.append(t)
        first = self._gain(batch, i, trials)
        kept = 0
        for k in sorted(range(len(spans)), key=lambda k: -first[k])[: self.swaps]:
            (a, w), old_i, old_j = spans[k], list(batch.seqs[i]), list(batch.seqs[j])
            if old_i[a:a + w] != xi[a:a + w] or old_j[a:a + w] != xj[a:a + w]:
                continue  # an earlier swap of this pass moved it
            t = list(old_i)
            t[a:a + w] = old_j[a:a + w]
            g1 = self._gain(batch, i, [t])[0]
            batch.set(i, t, batch.labels[i])
            u = list(old_j)
            u[a:a + w] = old_i[a:a + w]
            if g1 + self._gain(batch, j, [u])[0] > 0:
                batch.set(j, u, batch.labels[j])
                kept += 1
            else:
                batch.set(i, old_i, batch.labels[i])
            if current().expired():
                break
        return kept
