"""Which sentence holds each of a position's tokens: coordinate descent on the span cost.

The search state (`Assembly`) holds the sentences guessed so far and a `SpanScore`; moves are
small classes with one signature, `apply(state) -> bool` (whether it changed the guess):
`Settle(i)` gives position i's tokens to the sentences reaching it by the Hungarian method on
their costs (every token placed at i taken at least once, a token placed everywhere it occurs at
most once, any other as often as it fits: frequent words stand at one position in several
sentences), pricing per sentence only a shortlist of the unplaced tokens, those of least layer-1
residual in its context (`SpanScore.local`, one token through layer 0); `SwapTails(b1, b2)` swaps
two sentences' tokens from some position to the end of the shorter's body; `PermuteHeads(k)`
deals the first k tokens of every sentence reaching past k out again by the Hungarian method, which
moves a run of misassigned tokens home round a cycle of any length in one step. A move whose
sentences have not changed since it last ran is skipped (it would choose the same). The time
budget (`textleak.core.budget`) is checked after every move.
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
                 generator: torch.Generator | None = None, ends: tuple[int, int] | None = None,
                 required: Sequence[set[int]] | None = None, once: set[int] | frozenset = frozenset(),
                 shortlist: int | None = None, window: int = 4):
        """`ends`: the ([CLS], [SEP]) ids when the special tokens are declared: every sentence
        then starts and ends with them, and no body position takes either. `required`: per
        position, the tokens placed there (each stands there in some sentence); `once`: tokens
        placed at every position they occur (none stands twice at one position); any other
        token may stand at a position in several sentences (without `required`, none may where
        a position has as many tokens as sentences). `shortlist`: how many tokens beyond those
        placed `Settle` prices by whole-sentence cost per sentence (`shortlist`; None: all).
        `window`: the longest middle run `PermuteWindow` deals out (below 2: none)."""
        self.score, self.lengths, self.ends = score, list(lengths), ends
        specials = set(ends or ())
        self.choices = [sorted(set(a) - specials) or sorted(a) for a in allowed]
        self.required = [sorted(set(required[i]) & set(c)) if required is not None and i < len(required) else []
                         for i, c in enumerate(self.choices)]
        # without `required` (nothing placed): a position's tokens go to distinct sentences where there are enough
        self.once = set(once) if required is not None else {t for c in self.choices for t in c}
        self.seqs = [[0] * n for n in lengths]
        if ends is not None:
            for seq in self.seqs:
                seq[0], seq[-1] = ends
        self.version = [0] * len(lengths)
        self.seen: dict[object, tuple[int, ...]] = {}
        self.shortlist_size: int | None = shortlist
        self.window = window
        for i, cands in enumerate(self.choices):  # a first guess: each position's placed tokens, then the rest in turn
            who = self.who(i)
            if generator is not None:  # a restart: in a random turn
                who = [who[j] for j in torch.randperm(len(who), generator=generator).tolist()]
            fill = self.required[i] if len(self.required[i]) <= len(who) else []
            rest = [c for c in cands if c not in fill] or cands
            for j, b in enumerate(who):
                self.seqs[b][i] = fill[j] if j < len(fill) else rest[(j - len(fill)) % len(rest)] if rest else 0

    def shortlist(self, b: int, i: int) -> list[int]:
        """The columns of `choices[i]` whose whole-sentence cost `Settle` asks for sentence b: the
        tokens placed at i, b's own token there, and the `shortlist_size` others of least layer-1
        residual at i in b's context (`SpanScore.local`); every column where that cut is off or
        would keep them all."""
        cands, size = self.choices[i], self.shortlist_size
        every = list(range(len(cands)))
        if size is None or len(cands) <= len(self.required[i]) + size + 1:
            return every
        local = self.score.local(self.seqs[b], i, cands)
        if local is None:
            return every
        must = {j for j, c in enumerate(cands) if c in self.required[i] or c == self.seqs[b][i]}
        rest = [j for j in torch.argsort(local).tolist() if j not in must]
        return sorted(must | set(rest[:size]))

    def assign(self, i: int, cost, force: bool = True) -> dict[int, int]:
        """Row (a sentence reaching position i) -> column (a token of `choices[i]`) of least
        summed cost where each token placed at i is taken at least once and a token in `once`
        at most once (`_assign`)."""
        cands = self.choices[i]
        forced = [j for j, c in enumerate(cands) if c in self.required[i]] if force else []
        single = [j for j, c in enumerate(cands) if c in self.once]
        return _assign(cost, forced, single)

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
            for r, c in self.assign(i, cost, force=len(who) == len(self.who(i))).items():
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
        out += [SwapTails(b1, b2) for b1 in range(n) for b2 in range(b1 + 1, n)]
        out += [PermuteHeads(k) for k in range(1, max(self.lengths)) if len(self.heads_group(k)) > 1]
        return out

    def window_moves(self) -> list:
        """The escape moves, tried when a sweep of `moves` changes nothing: `PermuteWindow(a, b)`
        for every run a..b-1 of 2..`window` tokens starting after the first body token that at
        least two sentences cover."""
        first = 1 if self.ends is not None else 0
        return [PermuteWindow(a, a + w) for w in range(2, self.window + 1)
                for a in range(first + 1, max(self.lengths)) if len(self.heads_group(a + w - 1)) > 1]

    def heads_group(self, k: int) -> list[int]:
        """The sentences whose tokens 1..k (after [CLS]) are body tokens, which may trade them."""
        last = 1 if self.ends is not None else 0
        return [b for b, n in enumerate(self.lengths) if n - last > k]

    def descend(self, sweeps: int) -> int:
        """Sweeps of moves until one changes nothing (`sweeps` at most) or the budget runs out;
        returns the sweeps run."""
        if not self.score.spans:
            return 0
        done = 0
        for done in range(1, sweeps + 1):
            moved = self.run(self.moves())
            if moved is None:
                return done
            if not moved:
                moved = self.run(self.window_moves())
                if not moved:  # False: nothing moved; None: the budget ran out
                    break
        return done

    def run(self, moves: list) -> bool | None:
        """Apply `moves` in turn: whether any changed the guess, None once the budget runs out."""
        moved = False
        for move in moves:
            moved = move.apply(self) or moved
            if budget.expired():
                return None
        return moved


class Settle:
    """Position i's tokens to the sentences reaching it, by the Hungarian method on their costs
    (fewer distinct tokens than sentences: each sentence its cheapest; some repeat)."""

    def __init__(self, i: int):
        self.i = i

    def apply(self, state: Assembly) -> bool:
        i, who, cands = self.i, state.who(self.i), state.choices[self.i]
        if not state.stale(("settle", i), who):
            return False
        keep = [state.shortlist(b, i) for b in who]
        variants, where = [], []
        for r, b in enumerate(who):
            for c in keep[r]:
                v = list(state.seqs[b])
                v[i] = cands[c]
                variants.append(v)
                where.append(r * len(cands) + c)
        cost = torch.full((len(who) * len(cands),), _LEFT_OUT, dtype=torch.double)
        cost[torch.tensor(where, dtype=torch.long)] = state.score.cost(variants)
        pick = state.assign(i, cost.reshape(len(who), len(cands)).numpy())
        moved = False
        for r, b in enumerate(who):
            if state.seqs[b][i] != cands[pick[r]]:
                state.set(b, variants[where.index(r * len(cands) + pick[r])])
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


class PermuteWindow:
    """Give the sentences whose bodies cover positions a..b-1 each other's tokens there by the
    Hungarian method on the cost of every (sentence, segment) pair: exact for that window, since a
    sentence's cost depends on its own tokens alone (a run traded among sentences in their middles
    moves home, where neither `PermuteHeads` nor `SwapTails` reaches it in one step)."""

    def __init__(self, a: int, b: int):
        self.a, self.b = a, b

    @property
    def key(self) -> tuple:
        return ("window", self.a, self.b)

    def apply(self, state: Assembly) -> bool:
        a, b = self.a, self.b
        group = state.heads_group(b - 1)
        if len({tuple(state.seqs[g][a:b]) for g in group}) < 2 or not state.stale(self.key, group):
            return False
        variants = [state.seqs[g][:a] + state.seqs[src][a:b] + state.seqs[g][b:] for g in group for src in group]
        cost = state.score.cost(variants).reshape(len(group), len(group)).numpy()
        rows, cols = linear_sum_assignment(cost)
        if float(cost[rows, cols].sum()) >= float(cost.trace()) * (1 - 1e-9) or all(rows == cols):
            return False
        for r, c in zip(rows.tolist(), cols.tolist()):
            if r != c:
                state.set(group[r], variants[r * len(group) + c])
        state.stale(self.key, group)
        return True


class PermuteHeads(PermuteWindow):
    """Give the sentences reaching past position k each other's first tokens (0..k) by the
    Hungarian method (the window from the start: a run of first tokens misassigned round a cycle
    of three or more sentences moves home in one step, where a swap of two would first raise the
    cost)."""

    def __init__(self, k: int):
        super().__init__(0, k + 1)
        self.k = k

    @property
    def key(self) -> tuple:
        return ("heads", self.k)


#: the cost a (sentence, token) pair left off a shortlist counts as (above any sentence's)
_LEFT_OUT = 1e4


def _assign(cost, forced: Sequence[int] = (), single: Sequence[int] | set[int] = ()) -> dict[int, int]:
    """Row -> column of least summed cost where each `forced` column is taken at least once (when
    there are rows enough) and each `single` column at most once; other columns may repeat.
    (The Hungarian method over the columns repeated once per row, the first copy of a forced
    column discounted by more than any assignment costs.)"""
    n, m = cost.shape
    forced = list(forced) if len(forced) <= n else []
    single = set(single)
    cols = [j for j in range(m) for _ in range(1 if j in single else n)]
    if len(cols) < n:  # too few tokens for the rows: any may repeat
        cols = [j for j in range(m) for _ in range(n)]
    big = cost[:, cols].astype(float)
    discount = 1.0 + 2.0 * n * float(abs(cost).max())
    first = {j: cols.index(j) for j in forced}
    for j, k in first.items():
        big[:, k] -= discount
    rows, picked = linear_sum_assignment(big)
    return {int(r): cols[int(k)] for r, k in zip(rows, picked)}
