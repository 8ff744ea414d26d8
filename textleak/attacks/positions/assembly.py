"""Which sentence holds each of a position's tokens: coordinate descent on the span cost.

The search state (`Assembly`) holds the sentences guessed so far and a `SpanScore`; moves are
small classes with one signature, `apply(state) -> bool` (whether it changed the guess):
`Settle(i)` gives position i's tokens to the sentences reaching it by the Hungarian method on
their costs; `SwapTails(b1, b2)` swaps two sentences' tokens from some position to the end of the
shorter's body (or from its start to some position), which moves a run of misassigned tokens
in one step. A move whose sentences have
not changed since it last ran is skipped (it would choose the same). The time budget
(`textleak.core.budget`) is checked after every move.
"""

from __future__ import annotations

from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ...core import budget
from .score import SpanScore


class Assembly:
    """The guessed sentences (`seqs`) and what each move last saw (sentence versions)."""

    def __init__(self, score: SpanScore, allowed: Sequence[set[int]], lengths: Sequence[int],
                 generator: torch.Generator | None = None, ends: tuple[int, int] | None = None):
        """`ends`: the ([CLS], [SEP]) ids when the special tokens are declared: every sentence
        then starts and ends with them, and no body position takes either."""
        self.score, self.lengths, self.ends = score, list(lengths), ends
        specials = set(ends or ())
        self.choices = [sorted(set(a) - specials) or sorted(a) for a in allowed]
        self.seqs = [[0] * n for n in lengths]
        if ends is not None:
            for seq in self.seqs:
                seq[0], seq[-1] = ends
        self.version = [0] * len(lengths)
        self.seen: dict[object, tuple[int, ...]] = {}
        for i, cands in enumerate(self.choices):  # a first guess: each position's tokens in turn
            who = self.who(i)
            if generator is not None:  # a restart: in a random turn
                who = [who[j] for j in torch.randperm(len(who), generator=generator).tolist()]
            for j, b in enumerate(who):
                self.seqs[b][i] = cands[j % len(cands)] if cands else 0

    def grow(self) -> None:
        """A first guess built left to right: at each position its tokens go to the sentences
        reaching it by the Hungarian method on the cost of each sentence's prefix so far, closed
        by its own last token (a prefix's inputs are not the whole sentence's, but the prefix
        that continues the right sentence lies nearer the spans)."""
        for i in range(1, max(self.lengths) - 1):
            who = [b for b in self.who(i) if self.lengths[b] - 1 > i]
            cands = self.choices[i]
            if not who or len(cands) < 1 or (len(cands) == 1 and len(who) == 1):
                continue
            variants = [self.seqs[b][:i] + [c, self.seqs[b][-1]] for b in who for c in cands]
            cost = self.score.cost(variants).reshape(len(who), len(cands)).numpy()
            for r, c in _assign(cost).items():
                self.seqs[who[r]][i] = cands[c]

    def who(self, i: int) -> list[int]:
        """The sentences reaching position i (with `ends`: holding a body token there)."""
        if self.ends is not None:
            return [b for b, n in enumerate(self.lengths) if 0 < i < n - 1]
        return [b for b, n in enumerate(self.lengths) if n > i]

    def set(self, b: int, seq: list[int]) -> None:
        self.seqs[b] = list(seq)
        self.version[b] += 1

    def stale(self, key: object, sentences: Sequence[int]) -> bool:
        """Whether a move keyed `key` over `sentences` may choose differently than when it last
        ran (some sentence changed since); records what it sees now."""
        now = tuple(self.version[b] for b in sentences)
        if self.seen.get(key) == now:
            return False
        self.seen[key] = now
        return True

    def total(self) -> float:
        return float(self.score.cost(self.seqs).sum())

    def moves(self) -> list:
        """One sweep: settle every position that has a choice, then every pair's tails."""
        out: list = []
        for i, cands in enumerate(self.choices):
            who = self.who(i)
            if who and (len(cands) > 1 or (len(cands) == 1 and any(self.seqs[b][i] != cands[0] for b in who))):
                out.append(Settle(i))
        n = len(self.seqs)
        out += [SwapTails(b1, b2, heads) for heads in (False, True) for b1 in range(n) for b2 in range(b1 + 1, n)]
        return out

    def descend(self, sweeps: int) -> int:
        """Sweeps of moves until one changes nothing (`sweeps` at most) or the budget runs out;
        returns the sweeps run."""
        if not self.score.spans:
            return 0
        done = 0
        for done in range(1, sweeps + 1):
            moved = False
            for move in self.moves():
                moved = move.apply(self) or moved
                if budget.expired():
                    return done
            if not moved:
                break
        return done


class Settle:
    """Position i's tokens to the sentences reaching it, by the Hungarian method on their costs
    (fewer distinct tokens than sentences: each sentence its cheapest; some repeat)."""

    def __init__(self, i: int):
        self.i = i

    def apply(self, state: Assembly) -> bool:
        i, who, cands = self.i, state.who(self.i), state.choices[self.i]
        if not state.stale(("settle", i), who):
            return False
        variants = []
        for b in who:
            for c in cands:
                v = list(state.seqs[b])
                v[i] = c
                variants.append(v)
        pick = _assign(state.score.cost(variants).reshape(len(who), len(cands)).numpy())
        moved = False
        for r, b in enumerate(who):
            if state.seqs[b][i] != cands[pick[r]]:
                state.set(b, variants[r * len(cands) + pick[r]])
                moved = True
        if moved:
            state.stale(("settle", i), who)
        return moved


class SwapTails:
    """Swap sentences b1 and b2's tokens from some position to the end of the shorter's body
    (before its last token) where that lowers their summed cost; `heads=True`: from the first
    token after [CLS] to some position instead."""

    def __init__(self, b1: int, b2: int, heads: bool = False):
        self.b1, self.b2, self.heads = b1, b2, heads

    def apply(self, state: Assembly) -> bool:
        b1, b2 = self.b1, self.b2
        s1, s2 = state.seqs[b1], state.seqs[b2]
        m = min(len(s1), len(s2)) - 1
        if m < 2 or not state.stale(("heads" if self.heads else "tails", b1, b2), (b1, b2)):
            return False
        variants = []
        for i in range(1, m):
            a, z = (1, i + 1) if self.heads else (i, m)
            variants += [s1[:a] + s2[a:z] + s1[z:], s2[:a] + s1[a:z] + s2[z:]]
        cost = state.score.cost(variants).reshape(-1, 2).sum(1)
        base = float(state.score.cost([s1, s2]).sum())
        k = int(cost.argmin())
        if float(cost[k]) >= base * (1 - 1e-9):
            return False
        state.set(b1, variants[2 * k])
        state.set(b2, variants[2 * k + 1])
        state.stale(("heads" if self.heads else "tails", b1, b2), (b1, b2))
        return True


def _assign(cost) -> dict[int, int]:
    """Row -> column: each column at most once by the Hungarian method where there are as many
    columns as rows, else each row its cheapest (some columns repeat)."""
    if cost.shape[1] >= cost.shape[0]:
        rows, cols = linear_sum_assignment(cost)
        return dict(zip(rows.tolist(), cols.tolist()))
    return {r: int(cost[r].argmin()) for r in range(cost.shape[0])}
