"""Grouping occurrences into sentences under dropout: the search state of `exact-dropout`.

`Assembly` holds one row of occurrences per sentence (`rows[b][i]` stands at position i of
sentence b) and each row's score (`ContextScorer.score`, lower is better; the true sentence is
the minimum). Moves, each a small class with `apply(assembly) -> bool` (whether it improved):
- `AssignPosition(i)`: the occurrences at position i go to the sentences reaching it by the
  Hungarian method on the cost of each (sentence, occurrence) pair, the rest of each row fixed
  (the total is a sum over rows, so this is the best bijection at i);
- `SwapBlocks(width)`: windows of `width` positions (None: the tails, up to the shorter
  sentence's last token) swapped between two rows where that lowers their summed score (a word
  split in pieces, or two sentences crossed at a point, move together).
`search` sweeps the positions until no assignment changes, then tries the block moves, and repeats
while anything improves (within the time budget). `certify` runs the full mask solve per row.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ..core.budget import current
from ..text.dropout_span import ContextScorer, Occurrence

INF = float("inf")


class Assembly:
    def __init__(self, occurrences: Sequence[Sequence[Occurrence]], lengths: Sequence[int], scorer: ContextScorer,
                 ends: tuple[int | None, int | None], seed: int = 0, tol: float = 1e-4):
        self.lengths, self.scorer, self.tol = list(lengths), scorer, tol
        self.cls_id, self.sep_id = ends
        self.rng = random.Random(seed)
        self.reach = [[b for b, n in enumerate(lengths) if n > i] for i in range(max(lengths))]
        self.pool = [self._complete(list(found), i) for i, found in enumerate(occurrences[:max(lengths)])]
        self.rows: list[list[Occurrence | None]] = [[None] * n for n in lengths]
        for i, pool in enumerate(self.pool):
            self._deal(i, pool)
        self.scores = self._score_rows(range(len(self.rows)))
        self.sweeps_run = 0

    def _complete(self, found: list[Occurrence], i: int) -> list[Occurrence]:
        """Exactly as many occurrences as sentences reach position i: the best-fitting ones, and
        for any not found a stand-in without a mask (its sentence cannot be certified)."""
        need = len(self.reach[i])
        found = sorted(found, key=lambda o: o.residual)[:need]
        while len(found) < need:
            token = found[0].token if found else (self.sep_id or 0)
            kept = torch.ones_like(found[0].kept) if found else torch.ones(self.scorer.W.shape[0], dtype=torch.bool)
            found.append(Occurrence(token, i, kept, INF))
        return found

    def _fits(self, b: int, o: Occurrence) -> bool:
        """The template: [SEP] exactly at each sentence's last position, [CLS] at its first."""
        if self.sep_id is None:
            return True
        last = o.position == self.lengths[b] - 1
        return (o.token == self.sep_id) == last and (o.position != 0 or o.token == self.cls_id)

    def _deal(self, i: int, pool: list[Occurrence]) -> None:
        order = list(pool)
        self.rng.shuffle(order)
        free = list(self.reach[i])
        for o in sorted(order, key=lambda o: o.token != self.sep_id):
            b = next((b for b in free if self._fits(b, o)), free[0])
            self.rows[b][i] = o
            free.remove(b)

    def _score_rows(self, rows) -> list[float]:
        return [float(self.scorer.score([self.rows[b]])[0][0]) for b in rows]

    def search(self, sweeps: int) -> None:
        moves = [AssignPosition(i) for i in range(len(self.pool)) if len(self.reach[i]) > 1]
        blocks = [SwapBlocks(2), SwapBlocks(3), SwapBlocks(None)]
        for _ in range(sweeps):
            self.sweeps_run += 1
            changed = any([m.apply(self) for m in moves])
            if not changed:
                changed = any([m.apply(self) for m in blocks])
            if not changed or current().expired():
                break

    def certify(self) -> list[bool]:
        return [bool(all(r.residual < INF for r in row) and float(self.scorer.certify(row).max()) < self.tol)
                for row in self.rows]


class AssignPosition:
    def __init__(self, i: int):
        self.i = i

    def apply(self, a: Assembly) -> bool:
        i, sentences = self.i, a.reach[self.i]
        pool = [a.rows[b][i] for b in sentences]
        cost = torch.full((len(sentences), len(pool)), INF, dtype=torch.double)
        for r, b in enumerate(sentences):
            options = [c for c, o in enumerate(pool) if a._fits(b, o)]
            if not options:
                continue
            variants = [a.rows[b][:i] + [pool[c]] + a.rows[b][i + 1:] for c in options]
            cost[r, options] = a.scorer.score(variants)[0]
        finite = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, 1e30))
        rows, cols = linear_sum_assignment(finite.numpy())
        new = {sentences[r]: pool[c] for r, c in zip(rows, cols)}
        total = sum(float(cost[r, c]) for r, c in zip(rows, cols))
        if not total < sum(a.scores[b] for b in sentences) - 1e-12:
            return False
        moved = [b for b in sentences if new[b] is not a.rows[b][i]]
        for b in sentences:
            a.rows[b][i] = new[b]
        for b, s in zip(moved, a._score_rows(moved)):
            a.scores[b] = s
        return bool(moved)


class SwapBlocks:
    def __init__(self, width: int | None):
        self.width = width

    def apply(self, a: Assembly) -> bool:
        improved = False
        B = len(a.rows)
        for b in range(B):
            for c in range(b + 1, B):
                top = min(a.lengths[b], a.lengths[c]) - (1 if a.sep_id is not None else 0)
                for i in range(1 if a.cls_id is not None else 0, top):
                    w = top - i if self.width is None else self.width
                    if w < 2 or i + w > top:
                        continue
                    rb = a.rows[b][:i] + a.rows[c][i:i + w] + a.rows[b][i + w:]
                    rc = a.rows[c][:i] + a.rows[b][i:i + w] + a.rows[c][i + w:]
                    sb = float(a.scorer.score([rb])[0][0])
                    sc = float(a.scorer.score([rc])[0][0])
                    if sb + sc < a.scores[b] + a.scores[c] - 1e-12:
                        a.rows[b], a.rows[c], a.scores[b], a.scores[c] = rb, rc, sb, sc
                        improved = True
        return improved
