"""Past the rank limit, short sentences inverted from their own last-layer [CLS] states *before* the
search (`beyond_rank --option targets=true --option invert=N --option first=true`), each handed to the
search as a find: its certificates (the sentence spans and the peel) decide, and a sentence they admit
is peeled off the batch's gradient, so the search and the finish have its tokens and its state out of
what they explain.

`beyond_rank_invert` runs the inversion inside the finish, on what the search left: the search has by
then spent its share on the short sentences the inversion brings back anyway, and the inversion's time is
the descent's (CoLA batch 64, 600 CPU s: ROUGE-1 55.3 -> 53.0, recipes/measured/large_batch_inv_s23/).
Here the states are read (`leaks.pooled`, starts drawn from the whole batch's columns) and the short
lengths inverted on the search's share of the time; the finish reuses the states (`BagFinish.pooled`)
and inverts nothing again.

Measured (MiniLM, dev batch 0 of 64, `targets=true finish=0.5 invert=9`, off / on side by side, one thread,
CPU-clock budget, recipes/measured/large_batch_s24/): CoLA at 600 CPU s ROUGE-1/2 53.5/26.6 -> 55.7/27.4, exact
= certified 10 -> 10 (load 6-10); SST-2 at 450 CPU s 48.6/30.6 -> 49.3/26.3, exact = certified 12 -> 11 (load
3.7-6.5). Mixed, one batch each: off by default.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import torch

from ..core import budget
from ..text.leaks.pooled import PooledStates, pooled_states
from .beyond_rank_invert import StateInversion
from .beyond_rank_targets import cls_states

log = logging.getLogger(__name__)


class FirstInversion:
    """Reads the pooled states and inverts the short missing lengths before the search (module doc).

    run(search, allowed) -> the pooled states (None: no two-class pooler), after handing every certain
    inversion to `search.take`; `report` says how many states were read, inverted and taken."""

    def __init__(self, layout: Any, gradients: dict, rank: int, specials: set[int], cls: int, sep: int,
                 longest: int, seed: int = 0):
        self.layout, self.gradients, self.rank, self.specials = layout, gradients, rank, specials
        self.invert = StateInversion(layout, cls, sep, longest=longest, seed=seed)
        self.rng = random.Random(seed)
        self.report: dict[str, Any] = {}
        self.pooled: PooledStates | None = None

    def run(self, search: Any, allowed: Sequence[set[int]]) -> PooledStates | None:
        lengths = list(search.missing)
        options = [sorted(t for t in a if t not in self.specials) for a in allowed]
        seen: list[tuple[list[list[int]], torch.Tensor]] = []
        got = pooled_states(self.layout, self.gradients, self.rank,
                            lambda n: self._seen(lengths, options, n, seen, search))
        self.pooled = got
        if got is None:
            self.report = {"states": 0}
            return None
        drawn = ([s for q, _ in seen for s in q], torch.cat([h for _, h in seen])) if seen else ([], got.states[:0])
        inverted = self.invert.run(got.states, lengths, options, drawn) if not budget.expired() else []
        taken = 0
        for _, seq in inverted:
            if len(seq) in search.missing and seq not in search.found:
                taken += bool(search.take(seq, float(search.residuals([seq])[0])))
        self.report = {"states": len(got.states), "inverted": self.invert.report, "taken": taken}
        log.debug("first inversion: %s", self.report)
        return got

    def _seen(self, lengths: Sequence[int], options: Sequence[list[int]], n: int,
              seen: list[tuple[list[list[int]], torch.Tensor]], search: Any) -> torch.Tensor:
        """The [CLS] states of n random sentences of the declared lengths, each content token drawn from
        what its column allows (kept in `seen` for the inversion's length discriminant)."""
        seqs = []
        for _ in range(n):
            m = self.rng.choice(lengths)
            seqs.append([search.cls_id] + [self.rng.choice(options[p]) if p < len(options) and options[p]
                                           else search.sep_id for p in range(1, m - 1)] + [search.sep_id])
        h = cls_states(self.layout, seqs)
        seen.append((seqs, h))
        return h
