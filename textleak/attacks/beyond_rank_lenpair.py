"""The target descent's tracks paired with the states by fit at each length, not by the distance of a generic track
(`beyond_rank --option length_pairing=STEPS`, #16, session 41; off).

`beyond_rank_targets.TargetDescent` pairs each assembled track with a pooled [CLS] state by the Hungarian on the
distance of the track's own state, and the track's length is the assembly's: the pairing is blind to length (session
25: 14 of CoLA 0's 56 pairs have their state's sentence's length; session 40: 32 of 56 are 2+ tokens off), and the
drafts and sweeps that follow keep (or change by one token a stall) that length.

Here each state is first drafted (`beyond_rank_drafts.StateDrafts`' relaxation, `steps` steps) at each candidate
length: every length of the tracks (the missing sentences' declared lengths) or, with `window` W > 0, those within W
tokens of the length of the track the distance pairing gives it; each draft starts from the track of that length
nearest the state. A state's fit at a length is the nearer of that draft's distance and the start's. Lengths are
then given to states by the Hungarian on the fits, each length as many times as tracks have it, and within each
length the tracks to its states by the Hungarian on the tracks' distances; a paired track is replaced by its state's
draft at that length where the draft is nearer (the descent's drafts and sweeps follow as before).

Measured offline against the truth (session 41, the finish's inputs of a 450 CPU s defaults run on dev batch 0 of 64,
recipes/measured/large_batch_s41/lenpair_README.md): the fits do not read the length. CoLA, 56 states, 14 lengths:
20 steps (52 CPU s) put the true length first for 13 states and the Hungarian gives 12 their true length, 60 steps
(143 CPU s) 14 and 13, the distance pairing 14; SST-2, 53 states, 24 lengths, 20 steps (103 CPU s): 4 first, 6 by
the Hungarian, the distance pairing 7. The median fit is flat in the length gap (CoLA 0.60 at the true length,
0.60-0.68 within 4 tokens). Not measured in the attack; off.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ..core import budget
from .beyond_rank_drafts import StateDrafts

#: the fit of a (state, length) not drafted (out of the window, or the budget spent): past any relative distance
FAR = 1e3


class LengthPairing:
    """run(tracks, dist, targets, options) -> [(track, state)] pairs (module doc); tracks (a list) changed in place
    where a state's draft at its track's length is nearer than the track, dist [tracks, states] with it. `report`:
    the lengths drafted, the drafts' rows, the pairs whose length differs from the distance pairing's."""

    def __init__(self, descent: Any, steps: int, window: int = 0, seed: int = 0, bfloat16: bool = False):
        self.descent, self.steps, self.window = descent, steps, window
        self.drafts = StateDrafts(descent, steps, seed=seed, bfloat16=bfloat16)
        self.report = {"lengths": 0, "rows": 0, "moved": 0, "replaced": 0}

    def run(self, tracks: list[list[int]], dist: torch.Tensor, targets: torch.Tensor,
            options: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        counts = Counter(len(t) for t in tracks)
        lengths = sorted(counts)
        base = dict(zip(*[a.tolist() for a in map(torch.as_tensor, linear_sum_assignment(dist.numpy()))]))
        first = {c: len(tracks[r]) for r, c in base.items()}  # the distance pairing's length at each state
        fit = torch.full((len(targets), len(lengths)), FAR, dtype=torch.float64)
        drawn: dict[tuple[int, int], tuple[list[int], float]] = {}
        for k, n in enumerate(lengths):
            rows = [r for r, t in enumerate(tracks) if len(t) == n]
            near, at = dist[rows].min(0)
            states = [c for c in range(len(targets)) if not self.window or abs(first.get(c, n) - n) <= self.window]
            fit[states, k] = near[states]
            if n <= 2 or not states or budget.expired():
                continue
            seqs = self.drafts._relaxed([tracks[rows[int(at[c])]] for c in states], targets[states], options,
                                        self.steps)
            d = (self.descent.states(seqs) - targets[states]).norm(dim=1) / targets[states].norm(dim=1)
            self.report["lengths"] += 1
            self.report["rows"] += len(states)
            for c, s, v in zip(states, seqs, d.tolist()):
                drawn[c, n] = (s, v)
                fit[c, k] = min(float(fit[c, k]), v)
        return self._assigned(tracks, dist, counts, lengths, fit, drawn, first)

    def _assigned(self, tracks: list[list[int]], dist: torch.Tensor, counts: Counter,
                  lengths: list[int], fit: torch.Tensor, drawn: dict, first: dict[int, int]) -> list[tuple[int, int]]:
        """Lengths to states (Hungarian on `fit`, each length `counts` times), then tracks to states within each
        length (Hungarian on `dist`); each paired track replaced by its state's draft there where nearer."""
        cols = [k for k, n in enumerate(lengths) for _ in range(counts[n])]
        rows, picked = linear_sum_assignment(fit[:, cols].numpy())
        given = {int(c): lengths[cols[int(k)]] for c, k in zip(rows, picked)}
        pairs: list[tuple[int, int]] = []
        for n in lengths:
            mine = [r for r, t in enumerate(tracks) if len(t) == n]
            states = [c for c, m in given.items() if m == n]
            if not states:
                continue
            a, b = linear_sum_assignment(dist[mine][:, states].numpy())
            pairs += [(mine[int(i)], states[int(j)]) for i, j in zip(a, b)]
        for r, c in pairs:
            n = len(tracks[r])
            self.report["moved"] += first.get(c) != n
            seq, d = drawn.get((c, n), (None, FAR))
            if d < float(dist[r, c]):
                tracks[r], dist[r, c] = seq, d
                self.report["replaced"] += 1
        return sorted(pairs)
