"""Moves: what the search tries on its closest misses when settling has stalled.

A move is a small class with one signature, `move(search, seq) -> (sentence, residual)`: the best
variant of the miss `seq` it finds (or `seq` itself) and its whole-sentence layer-1 residual,
which the search hands to its certificates. Moves are registered by name in `MOVES` and run in
the order `Exact.moves` names them, each on every closest miss, until one round makes progress; a
move with `widest_only` runs only once the widest round has failed too. A move that scores many
variants (`polish`, `shift`) stops at the time budget with the best it has: on a 44-token sentence
one polish ran 80 s between the search's own budget checks (SST-2 dev batch 4, noise 1e-10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import torch

from ...core import budget
from ...registry import Registry
from ...text.layouts import Layout
from ...text.leaks import LayerSpan, position_residuals, slot_residuals
from .sequences import cuts, shifted

if TYPE_CHECKING:
    from .search import Search

#: name -> Move class
MOVES: Registry[type] = Registry("exact move")


class Move:
    name: ClassVar[str] = ""
    #: run only in the widest round (costly, and seldom the one that helps)
    widest_only: ClassVar[bool] = False

    def __call__(self, search: "Search", seq: list[int]) -> tuple[list[int], float]:
        raise NotImplementedError


def word_trials(layout: Layout, span1: LayerSpan, free: Callable[..., list[int]], seq: list[int], ends: bool,
                pieces: set[int], worst: int) -> list[list[int]]:
    """`seq` with each continuation piece as the last piece of a word of two to four pieces ending
    at one of the `worst` positions (highest layer-1 residual in context), the pieces before it
    re-chosen in context: the first one past the gap first (it ranks well once the word's end is
    there), then the middle ones."""
    dev = layout.device
    inner = range(1, len(seq) - 1) if ends else range(len(seq))
    profile = position_residuals(layout, span1, seq)
    worst_at = [q for q in torch.argsort(profile, descending=True).tolist() if q in inner][:worst]
    trials: list[list[int]] = []
    for q in worst_at:
        last = [c for c in free(q, len(seq)) if c in pieces and c != seq[q]]
        if not last:
            continue
        base = torch.tensor(seq, device=dev).repeat(len(last), 1)
        base[:, q] = torch.tensor(last, device=dev)
        for k in (1, 2, 3):  # pieces before the last one
            if q - k not in inner:
                continue
            rows = base.clone()
            for j in range(q - k, q):
                options = torch.tensor(free(j, len(seq)), device=dev)
                # each piece sees the pieces chosen before it and, past the unfilled ones, the last
                scores = slot_residuals(layout, span1, rows[:, :j], options, rows[:, q:], suffix_at=q)
                rows[:, j] = options[scores.argmin(1)]
            trials += rows.tolist()
    return trials


@MOVES.register("word")
class WordMove(Move):
    """Word moves, for a miss stalled on a word split in pieces (e.g. "mani ##pu ##lative").
    No piece ranks well alone: in a wrong context the true pieces come ~100th of 125, so no
    single-token change finds them. But given its last piece, the word's first piece ranks
    first (measured on RT). So at each of the `worst` positions (highest residual in
    context), every continuation piece is tried as the last piece of a word of two to four
    pieces, whose first piece (then middle pieces) is re-chosen in context; the `top` variants
    that lower the whole-sentence residual most are settled."""

    name = "word"

    def __init__(self, worst: int = 6, top: int = 4):
        self.worst, self.top = worst, top

    def __call__(self, search: "Search", seq: list[int]) -> tuple[list[int], float]:
        current = float(search.residuals([seq])[0])
        trials = word_trials(search.layout, search.span1, search.free, seq, search.ends, search.pieces, self.worst)
        if not trials:
            return seq, current
        res = search.residuals(trials)
        best_ids = [i for i in torch.argsort(res)[:self.top].tolist() if float(res[i]) < current]
        best, best_res = (trials[best_ids[0]], float(res[best_ids[0]])) if best_ids else (seq, current)
        if search.span1.certifies(best_res, len(seq)):
            return best, best_res
        candidates = search.settle([trials[i] for i in best_ids])
        for cand, r in zip(candidates, search.residuals(candidates).tolist() if candidates else []):
            if r < best_res:
                best, best_res = cand, float(r)
        return best, best_res


@MOVES.register("shift")
class ShiftMove(Move):
    """Shift moves, for a miss that is a true sentence out of place: settling leaves a
    sentence with a word dropped or doubled near its start (the rest shifted by a position
    or two, each token still fitting its neighbours). Every variant that inserts or deletes
    1-3 tokens at one position (the length kept by trimming or padding at an end) is scored
    on the whole-sentence residual; the `top` best are settled; repeated while it improves."""

    name = "shift"

    def __init__(self, rounds: int = 3, top: int = 4):
        self.rounds, self.top = rounds, top

    def __call__(self, search: "Search", seq: list[int]) -> tuple[list[int], float]:
        best, best_res = seq, float(search.residuals([seq])[0])
        for _ in range(self.rounds):
            variants = shifted(best, search.ends)
            if not variants:
                break
            scores = search.residuals(variants)
            improved = False
            settled = search.settle([variants[j] for j in torch.argsort(scores)[:self.top].tolist()])
            for s, res in zip(settled, search.residuals(settled).tolist()):
                if res < best_res:
                    best, best_res, improved = s, float(res), True
            if not improved or search.span1.certifies(best_res, len(best)) or budget.expired():
                break
        return best, best_res


@MOVES.register("length")
class LengthMove(Move):
    """Length moves, for a miss that is the start of a longer sentence of the batch (a seed
    of the wrong length settles into whichever sentence it resembles, cut at its own end):
    the miss grown to the next longer missing length (settled: one settle per miss, the
    cost of this move) and cut to each shorter one; the variant with the least residual per
    token."""

    name = "length"

    def __call__(self, search: "Search", seq: list[int]) -> tuple[list[int], float]:
        n, lengths, ends = len(seq), search.missing, search.ends
        m = min((m for m in lengths if m > n), default=n)
        grown = [seq[:-1] + [seq[-2]] * (m - n) + [seq[-1]] if ends else seq + [seq[-1]] * (m - n)] if m > n else []
        variants = [seq] + search.settle(grown) + cuts(seq, lengths, ends, search.sep_id)
        res = search.residuals(variants)
        per_token = res / torch.tensor([len(v) for v in variants], dtype=res.dtype, device=res.device)
        i = int(torch.argmin(per_token))
        return variants[i], float(res[i])


def substitutions(search: "Search", seq: list[int], p: int, options: Sequence[int]
                  ) -> tuple[list[list[int]], torch.Tensor | None]:
    """`seq` with each of `options` at position p, and each one's whole-sentence residual."""
    trials = [seq[:p] + [t] + seq[p + 1:] for t in options]
    return trials, (search.residuals(trials) if trials else None)


@MOVES.register("polish")
class PolishMove(Move):
    """Coordinate descent on the whole-sentence layer-1 residual (each token in its true
    context once the rest is right), at most `Exact.sweeps` passes. When single changes stall
    short of the certificate, adjacent pairs at the worst positions are changed together (a word
    split into two pieces, or two swapped tokens, needs both at once; one of the two among its
    `top` best single changes), then 3-token windows by a small beam; then single changes resume."""

    name = "polish"
    widest_only = True

    def __init__(self, pairs: bool = True, worst: int = 3, top: int = 10):
        self.pairs, self.worst, self.top = pairs, worst, top

    def __call__(self, search: "Search", seq: list[int]) -> tuple[list[int], float]:
        span1 = search.span1
        current = float(search.residuals([seq])[0])
        inner = range(1, len(seq) - 1) if search.ends else range(len(seq))
        for _ in range(search.config.sweeps):
            if span1.certifies(current, len(seq)):
                break
            changed = False
            for p in inner:
                if budget.expired():
                    return seq, current
                trials, scores = substitutions(search, seq, p, [t for t in search.free(p, len(seq)) if t != seq[p]])
                if not trials:
                    continue
                j = int(scores.argmin())
                if float(scores[j]) < current:
                    seq, current, changed = trials[j], float(scores[j]), True
                    if span1.certifies(current, len(seq)):
                        break
            if self.pairs and not changed and not span1.certifies(current, len(seq)):
                seq, current, changed = self._pair_step(search, seq, current, inner)
            if not changed:
                break
        return seq, current

    def _best(self, search: "Search", seq: list[int], p: int, options: list[int]) -> list[int]:
        """The `top` tokens at position p that leave the lowest whole-sentence residual alone."""
        _, scores = substitutions(search, seq, p, options)
        return [options[i] for i in torch.argsort(scores)[:self.top].tolist()]

    def _pair_step(self, search: "Search", seq: list[int], current: float, inner
                   ) -> tuple[list[int], float, bool]:
        per_position = position_residuals(search.layout, search.span1, seq)
        order = [p for p in torch.argsort(per_position, descending=True).tolist() if p in inner]
        best, best_score, free, n = seq, current, search.free, len(seq)
        for p in order[:self.worst]:
            for q in (p - 1, p + 1):
                if q not in inner or budget.expired():
                    continue
                a, b = min(p, q), max(p, q)
                best_a, best_b = (self._best(search, seq, x, free(x, n)) for x in (a, b))
                pairs = {(s, t) for s in best_a for t in free(b, n)} | {(s, t) for s in free(a, n) for t in best_b}
                trials = [seq[:a] + [s, t] + seq[b + 1:] for s, t in sorted(pairs)]
                scores = search.residuals(trials)
                j = int(scores.argmin())
                if float(scores[j]) < best_score:
                    best, best_score = trials[j], float(scores[j])
        if best is seq and not budget.expired():  # no pair helps: a 3-token window at the worst position
            best, best_score = self._window(search, seq, current, inner, order[0])
        return best, best_score, best is not seq

    def _window(self, search: "Search", seq: list[int], current: float, inner, p: int) -> tuple[list[int], float]:
        best, best_score = seq, current
        for start in (p - 2, p - 1, p):
            window = [q for q in range(start, start + 3) if q in inner]
            if len(window) < 3:
                continue
            beams = [list(seq)]
            for q in window:
                trials = [b[:q] + [t] + b[q + 1:] for b in beams for t in search.free(q, len(seq))]
                scores = search.residuals(trials)
                keep = torch.argsort(scores)[:self.top].tolist()
                beams = [trials[i] for i in keep]
                if float(scores[keep[0]]) < best_score:
                    best, best_score = beams[0], float(scores[keep[0]])
        return best, best_score
