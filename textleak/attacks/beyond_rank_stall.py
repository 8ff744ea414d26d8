"""What a stalled sweep of the target descent tries (`beyond_rank_targets.TargetDescent._sweep`: a pass over the
positions that changed no single token): a one-token length change (`resized`, with `lengths`), then two tokens
changed at once (`paired`). Moved out of `beyond_rank_targets` (session 40), with `delete_first` added.

`delete_first` (`beyond_rank --option lengths_delete_first=true`, off): a stall scores its one-token deletions first
and its insertions only where no deletion comes nearer the state. Why (session 39, large_batch_s39/lengths_README.md,
the descent offline on session 32's CoLA 0 dump, read against the truth): every deletion a stall kept went toward
the true length (7 of 7), insertions 10 of 16; 24 of the 56 starting tracks were too long and 18 too short, yet the
stalls kept more than twice as many insertions. All changes at once is a vote of ~(n-1) x 70 insertions against
n-2 deletions on one noisy distance: the nearest of many more draws is an insertion more often than the length
calls for. Deletions first also costs less where one is kept (n-2 candidates, against a sweep's worth for the
insertions)."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def resized(descent: Any, seq: list[int], target: torch.Tensor, options: Sequence[list[int]], best: float
            ) -> tuple[list[int], float]:
    """The track one token shorter (each content token left out) or longer (each token its column allows
    inserted at each position, up to the columns' length), the nearest kept if nearer (`descent.resized` and, for
    a deletion, `descent.deleted` counted). The finish pairs tracks with states blind to length, so most descend
    onto a sentence of another length, which no single change reaches (CoLA batch 64: 42 of 56 pairs; SST-2: 44 of
    50; recipes/measured/large_batch_s25/). With `descent.delete_first`: the deletions alone first, the insertions
    scored only where none of them is nearer (module doc)."""
    n = len(seq)
    deletions = [seq[:p] + seq[p + 1:] for p in range(1, n - 1)] if n > 3 else []

    def insertions() -> list[list[int]]:
        return [seq[:p] + [t] + seq[p:] for p in range(1, n) for t in options[p]] if n < len(options) else []
    if descent.delete_first and deletions:
        (k,), (d,) = descent._nearest(deletions, target)
        if d < best:
            descent.resized, descent.deleted = descent.resized + 1, descent.deleted + 1
            return deletions[k], d
        trial, deletions = insertions(), []
    else:
        trial = deletions + insertions()
    if not trial:
        return seq, best
    (k,), (d,) = descent._nearest(trial, target)
    if d >= best:
        return seq, best
    descent.resized, descent.deleted = descent.resized + 1, descent.deleted + (k < len(deletions))
    return trial[k], d


def paired(descent: Any, seq: list[int], target: torch.Tensor, tops: dict[int, list[int]], best: float
           ) -> tuple[list[int], float]:
    """Two positions changed at once, each to one of its PAIR best single changes (two wrong tokens
    where either alone put right moves the state away: a local minimum of single changes)."""
    trial = []
    for p in tops:
        for q in tops:
            if p < q:
                trial += [seq[:p] + [a] + seq[p + 1:q] + [c] + seq[q + 1:] for a in tops[p] for c in tops[q]]
    if not trial:
        return seq, best
    (k,), (d,) = descent._nearest(trial, target)
    return (trial[k], d) if d < best else (seq, best)
