"""Which offered change the token repair keeps, and keeping it (`update_repair.BoxRepair`, mixed in as `RepairKeep`).

Every move of the repair (a substitution, `BoxRepair.keep_best`; a trade, `RepairMoves._exchange`; a cross-sentence
move, `RepairMoves._move`; a pair refilled, `update_repair_pairs.refill`) collects the changes that lower the box
misfit (`_offer`), lets the [CLS] guard pick one (`_guarded`; `_passing` before any gradient with `guard_first`) and
keeps it (`_keep_change`: the misfit, the batch's mean gradient, the changed sentences and their own gradients, one
change counted). Session 44 made the last one method where four moves each wrote it out (a pure refactor).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..core.budget import now as budget_now
from .update_repair_cutoff import cut_misfit


def fresh_mean(total: torch.Tensor, changes: Sequence[tuple[torch.Tensor, torch.Tensor]], size: int) -> torch.Tensor:
    """The batch's mean gradient `total` with some sentences' gradients changed, as a new tensor: total + (g1 - own1
    + g2 - own2 ...) / size, summed left to right (changes: (new gradient, the sentence's own), [entries] each).
    `BoxRepair._shifted`'s plain order, so the same value to the bit as its misfit was weighed on (inplace or not)."""
    delta = None
    for g, own in changes:
        delta = g - own if delta is None else delta + g - own
    return total + delta / size


class RepairKeep:
    """The choice and the keeping of one change, mixed into `update_repair.BoxRepair`: they read and change its
    descent (`begin`: `_best`, `_total`, `_own`, `_B`, `_cls`, `_deadline`, `_changes`) and use its `guard`,
    `guard_first`; they count `guarded` and `unweighed`."""

    #: option `repair_cutoff` (off): a trial's misfit given up once it cannot be kept (`_trial_misfit`); `cut`: the
    #: trials [given up, summed through]
    cutoff, cut = False, (0, 0)

    def _offer(self, below: list[tuple], candidate: tuple) -> None:
        """Collect a change below the batch's misfit (`candidate`: (misfit, ...), its gradients with it): every one
        for the guard to weigh, else only the least so far (the first on a tie), so that unguarded no more than one
        candidate's gradients are held (each is the Q/K/V weights' size)."""
        if self.guard is not None:
            below.append(candidate)
        elif not below or candidate[0] < below[0][0]:
            below[:] = [candidate]

    def _trial_misfit(self, changes: Sequence[tuple[torch.Tensor, torch.Tensor]], below: list[tuple]) -> float:
        """The box misfit of the batch with `changes` ((new gradient, the sentence's own) each): `misfit(_shifted(
        changes))`; with option `repair_cutoff` (and `inplace`) inf once it cannot be kept (`update_repair_cutoff`:
        not below the batch's misfit, nor, unguarded, below the least offered in `below`), else the same value."""
        if not (self.cutoff and self.inplace):
            return self.misfit(self._shifted(changes))
        bound = self._best if self.guard is not None or not below else min(self._best, below[0][0])
        value = cut_misfit(self, changes, bound)
        given = value == float("inf")
        self.cut = (self.cut[0] + given, self.cut[1] + (not given))
        return value

    def _passing(self, changes: list[dict[int, list[int]]]) -> list[bool]:
        """Per change (sentence index -> new sentence), whether the guard may pass it: all without `guard_first` (or
        a `guard`); else whether each changed sentence scores no higher than now (one `guard` call for them all)."""
        if self.guard is None or not self.guard_first or not changes or budget_now() >= self._deadline:
            return [True] * len(changes)
        flat = [(k, i, s) for k, c in enumerate(changes) for i, s in c.items()]
        ok = [True] * len(changes)
        for (k, i, _), v in zip(flat, self.guard([s for _, _, s in flat])):
            ok[k] = ok[k] and v <= self._cls[i]
        self.unweighed += ok.count(False)
        return ok

    def _guarded(self, below: list[tuple], changed: Callable[[tuple], dict[int, list[int]]]) -> tuple | None:
        """Of the candidate changes `below` (each (misfit, ...), below the batch's), the least-misfit one (the first
        on a tie); with a `guard`, the least-misfit one whose changed sentences (`changed`: candidate -> sentence
        index -> new sentence) each score no higher than now (their scores then updated), None where none does."""
        ranked = sorted(below, key=lambda f: f[0])
        if self.guard is None or not ranked:
            return ranked[0] if ranked else None
        for f in ranked:
            new = changed(f)
            scores = self.guard(list(new.values()))
            if all(v <= self._cls[i] for i, v in zip(new, scores)):
                for i, v in zip(new, scores):
                    self._cls[i] = v
                return f
            self.guarded += 1
        return None

    def _keep_change(self, seqs: list[list[int]], misfit: float,
                     changed: dict[int, tuple[list[int], torch.Tensor]], total: torch.Tensor | None = None) -> None:
        """Keep a change the guard passed (`_guarded`): `misfit` its box misfit, `changed` sentence index -> (new
        sentence, its gradient), in the order its misfit summed them; `total` the batch's new mean gradient where the
        move made it as a new tensor, else (None) made here afresh (`fresh_mean`, before the sentences' own gradients
        change): with `inplace` the mean a trial's misfit was weighed on is a scratch buffer (`_shifted`), which the
        next trial overwrites, so it is never kept. Changes `seqs` in place and counts one change."""
        if total is None:
            total = fresh_mean(self._total, [(g, self._own[i]) for i, (_, g) in changed.items()], self._B)
        self._best, self._total = misfit, total
        for i, (seq, g) in changed.items():
            seqs[i], self._own[i] = seq, g
        self._changes += 1
