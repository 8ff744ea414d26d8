"""The target descent's sweeps by gradient-guided steps (`beyond_rank --option guided=K`, #16, session 26).

`beyond_rank_targets.TargetDescent` descends each track onto its paired pooled state by exhaustive sweeps: at
every position every token its column allows (~100) is tried, one track at a time, in pair order. Far past
the limit that is too slow for the budget (session 25, 450 CPU s, the finish's 225: 3 of 56 CoLA tracks and
none of SST-2's converged, 12 of 50 SST-2 pairs got no sweep at all; recipes/measured/large_batch_s25/).

Here every track not yet at its state takes a step of the inversion's `GuidedDescent` in turn, all tracks of
one length in one batch: one forward/backward ranks each position's column by the first-order change of the
distance to the target, the K best per position are evaluated exactly, and the nearest kept (with `chain`,
the best changes at distinct positions also together, so one step puts several tokens right). A track the
guided step no longer improves gets one of the old exhaustive sweeps (`TargetDescent._sweep`: every column
token, then the length moves and pairs of changes where that stalls): improved, it goes back to the guided
steps; not, it is done. One exhaustive sweep per round, the nearest track first.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core import budget
from .beyond_rank_invert import GuidedDescent

#: improving single changes tried together per guided step (`GuidedDescent.chain`)
CHAIN = 8


class GuidedSweeps:
    """run(tracks, pairs, best): the tracks (a list, changed in place) descended onto their pairs' targets;
    pairs: (track index, target state, distance); best: track index -> its distance now (changed in place)."""

    def __init__(self, descent: Any, options: Sequence[Sequence[int]], top: int = 8, hit: float = 1e-2):
        self.descent, self.options, self.hit = descent, options, hit
        self.guide = GuidedDescent(descent.layout, options, top=top, chain=CHAIN)
        self.steps, self.full, self.rounds = 0, 0, 0  # guided steps (one per length a round), exhaustive sweeps
        self.state: dict[int, str] = {}  # track -> live (guided), stalled (exhaustive next) or done

    def run(self, tracks: list[list[int]], pairs: Sequence[tuple[int, torch.Tensor, float]],
            best: dict[int, float]) -> None:
        targets = {r: t for r, t, _ in pairs}
        self.state = {r: "live" if best[r] >= self.hit else "done" for r in targets}
        while not budget.expired():
            live = [r for r, s in self.state.items() if s == "live"]
            stalled = sorted((r for r, s in self.state.items() if s == "stalled"), key=lambda r: best[r])
            if not live and not stalled:
                break
            self.rounds += 1
            for n in sorted({len(tracks[r]) for r in live}):
                if budget.expired():
                    break
                self._step([r for r in live if len(tracks[r]) == n], tracks, targets, best)
            if stalled and not budget.expired():
                self._sweep(stalled[0], tracks, targets, best)

    def _step(self, rows: list[int], tracks: list[list[int]], targets: dict[int, torch.Tensor],
              best: dict[int, float]) -> None:
        """One guided step for the tracks `rows` (all of one length)."""
        seqs = [list(tracks[r]) for r in rows]
        T = torch.stack([targets[r] for r in rows])
        d = torch.tensor([best[r] for r in rows], dtype=T.dtype)
        better = set(self.guide.step(seqs, T, d, list(range(len(rows)))))
        self.steps += 1
        for j, r in enumerate(rows):
            if j in better:
                tracks[r], best[r] = seqs[j], float(d[j])
                self.state[r] = "done" if best[r] < self.hit else "live"
            elif not budget.expired():
                self.state[r] = "stalled"

    def _sweep(self, r: int, tracks: list[list[int]], targets: dict[int, torch.Tensor], best: dict[int, float]) -> None:
        """One exhaustive sweep of track r (`TargetDescent._sweep`); back to the guided steps where it improved."""
        seq, d = self.descent._sweep(tracks[r], targets[r], self.options, best[r])
        self.full += 1
        if d < best[r]:
            tracks[r], best[r] = seq, d
            self.state[r] = "done" if d < self.hit else "live"
        elif not budget.expired():
            self.state[r] = "done"
