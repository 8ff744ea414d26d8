"""The token repair's moves beyond one substitution (`update_repair.BoxRepair`, mixed in as `RepairMoves`).

Trades (`_exchange`, every sweep): two sentences trade what they hold at one position, or their whole heads up to
it: a slot that took another's tokens, where each single substitution back is worse. With `repair_exchange_screen`
the trades of a screened sweep are ranked by the [CLS] score first (`_trades`).

Cross-sentence move (`move`: `exact-update`'s option `cross_move`, off; session 21): a token standing where the
ranking does not support it goes to another position, of another sentence or its own, where it ranks above the
token there, and its old place takes one of the first tokens ranked there (`_move`). CoLA dev batch 0 of 4 at
lr 1e-5 stopped with "hates" ending "sarah sang a ballad" where "." belongs and a second "," in its place: the
substitution that takes it out of one sentence alone is refused by `cover`, and `_exchange` trades only at one
position. Side by side (MiniLM, K 8; `recipes/measured/fedavg_b4_small_lr_s21/move`): on CoLA lr 1e-5 dev batch 0
at budget 60 it certified (1.000, 20.7 CPU s) where off stopped so (0.956, 42.7 CPU s); at budget 400 both
certified, on in 356 repair trials against 531; SST-2 lr 1e-4 dev batch 0 tied (0.992 / 0.984, no move kept); RT
lr 1e-4 dev batch 0 lost twice (0.553 / 0.575 against 0.603 / 0.629) at a lower box misfit: far from the truth the
misfit does not guide the moves.

Slides (`slides`: `exact-update`'s option `repair_slide`, off; session 36): a token moved up to `slide` places within
its sentence, the tokens between shifted one place (a rotation of the span). RT dev batch 0 of 4 at K 8, lr 1e-5 ends
(session 35) with 25 of its 51 wrong positions holding a token of the same sentence at another place, in a basin of
the box misfit: 3 of 51 single substitutions toward the truth lower it, 0 of 949 pairs of them in two sentences, 0 of
90 copy trades and 0 of 210 swaps between sentences at any two positions; 18 of 1,030 slides of up to 5 places do
(`recipes/measured/fedavg_rt_lr5_s36`).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..core.budget import now as budget_now
from .update_repair_batch import weighed_trades


def missing(sequences: Sequence[Sequence[int]], cover: set[int] | None) -> int:
    """How many tokens of `cover` (the update's moved word rows) no sentence of the batch holds (0 without one)."""
    return len(cover - {t for s in sequences for t in s}) if cover else 0


def slides(seq: Sequence[int], width: int) -> list[list[int]]:
    """The sentence `seq` ([CLS] ... [SEP], both kept) with one inner token moved 1 to `width` places forward or back,
    the tokens between shifted one place toward its old place (one place: a swap of neighbours); distinct, not `seq`
    itself, in order of the moved span's start."""
    out, seen, n = [], {tuple(seq)}, len(seq)
    for p in range(1, n - 1):
        for q in range(p + 1, min(n - 1, p + width + 1)):
            for trial in (list(seq[:p]) + [seq[q]] + list(seq[p:q]) + list(seq[q + 1:]),  # q's token to p
                          list(seq[:p]) + list(seq[p + 1:q + 1]) + [seq[p]] + list(seq[q + 1:])):  # p's token to q
                if tuple(trial) not in seen:
                    seen.add(tuple(trial))
                    out.append(trial)
    return out


#: block moves (`update_repair_blocks`) and pairs of substitutions (`update_repair_pairs`) weighed on the box misfit
#: per sentence and sweep (those of least [CLS] score), where the repair's own screen keeps none (its full sweeps)
KEEP = 8
#: moves screened at a time between reads of the budget's deadline (`screened_blocks`): a 42-token sentence has
#: 5,796 moves, 3.6 times the 1,620 of the module doc's 24-token sentence (about 7 CPU s of forwards)
SCREEN_CHUNK = 256


def least_screened(repair: Any, trials: list[list[int]], keep: int = 0, screen: Any = None
                   ) -> tuple[list[list[int]], int]:
    """Of one sentence's `trials`, the `keep` (0: `repair.keep`, `KEEP` where that is 0 too) of least `screen` (None:
    `repair.screen`) score, and how many were left out (scored or not): all where there are no more than that. The
    screen runs `SCREEN_CHUNK` trials at a time and stops where the budget ends, keeping the best of those scored
    (block moves, `screened_blocks`; pairs of substitutions, `update_repair_pairs`)."""
    keep, screen = keep or repair.keep or KEEP, screen or repair.screen
    if len(trials) <= keep:
        return trials, 0
    scores: list[float] = []
    for i in range(0, len(trials), SCREEN_CHUNK):
        if scores and budget_now() >= repair._deadline:
            break
        scores += list(screen(trials[i:i + SCREEN_CHUNK]))
    best = sorted(range(len(scores)), key=scores.__getitem__)[:keep]
    return [trials[i] for i in best], len(trials) - len(best)


#: the cross-sentence move (`RepairMoves._move`): the least supported positions tried as sources, the target
#: positions tried per source, and the tokens tried at the source's place
MOVE_SOURCES, MOVE_TARGETS, MOVE_REFILLS = 4, 6, 2


def options_by_length(repair: Any, seqs: Sequence[Sequence[int]]) -> dict[int, list[list[int]]]:
    """The repair's `options` for each length that `seqs` hold (what the move, the kick and the length trades
    descend over)."""
    return {n: repair.options(n) for n in {len(s) for s in seqs}}


class RepairMoves:
    """The trades and the cross-sentence move of `update_repair.BoxRepair`, which this is mixed into: they read its
    descent (`begin`: `_best`, `_total`, `_own`, `_B`, `_labels`, `_deadline`) and use its `gradient`, `misfit`,
    `_shifted` (the trades), `options`, `_screening`, `screen`, `exchange_keep`, `cover`, `pins` and
    `update_repair_keep.RepairKeep`'s `_offer`, `_passing` (the trades only), `_guarded` and `_keep_change` (which
    changes the descent); they count `exchange_trials`, `exchange_screened` and `moves`."""

    def _exchange(self, seqs: list[list[int]]) -> None:
        """Two sentences trade what they hold at one position, or their whole heads up to it (a
        slot that took another's tokens: each single substitution back is worse); the best trade
        that lowers the batch's misfit is kept, for each pair of sentences (of `_trades`); none inside the box."""
        for a in range(len(seqs)):
            for b in range(a + 1, len(seqs)):
                if self._best <= 0:
                    return
                below, trades = [], self._trades(seqs, a, b)
                passing = self._passing([{a: x, b: y} for x, y in trades])  # `repair_guard_first`: the guard's
                for (x, y), gx, gy in weighed_trades(self, [t for t, ok in zip(trades, passing) if ok], a, b):
                    self.exchange_trials += 2
                    value = self._trial_misfit([(gx, self._own[a]), (gy, self._own[b])], below)
                    if value < self._best:
                        self._offer(below, (value, x, y, gx, gy))
                found = self._guarded(below, lambda f: {a: f[1], b: f[2]})
                if found is not None:  # the new mean made afresh (with `inplace` the trial's is a scratch buffer)
                    self._keep_change(seqs, found[0], {a: (found[1], found[3]), b: (found[2], found[4])})

    def _trades(self, seqs: list[list[int]], a: int, b: int) -> list[tuple[list[int], list[int]]]:
        """Sentences a and b's trades (at one position, or of their heads up to it) that change them; in a screened
        sweep with `exchange_keep` (option `repair_exchange_screen`), the `exchange_keep` distinct trades of least
        summed `screen` score of the two sentences (one forward each, where a trade's box misfit costs two
        backwards)."""
        trades = []
        for p in range(1, min(len(seqs[a]), len(seqs[b])) - 1):
            for x, y in ((seqs[a][:p] + [seqs[b][p]] + seqs[a][p + 1:], seqs[b][:p] + [seqs[a][p]] + seqs[b][p + 1:]),
                         (seqs[b][:p + 1] + seqs[a][p + 1:], seqs[a][:p + 1] + seqs[b][p + 1:])):
                if not (x == seqs[a] and y == seqs[b]):
                    trades.append((x, y))
        if not self._screening or self.screen is None or self.exchange_keep <= 0:
            return trades
        trades = list({(tuple(x), tuple(y)): (x, y) for x, y in trades}.values())
        if len(trades) <= self.exchange_keep or budget_now() >= self._deadline:
            return trades
        n = len(trades)
        scores = self.screen([x for x, _ in trades] + [y for _, y in trades])
        self.exchange_screened += n - self.exchange_keep
        return [trades[i] for i in sorted(range(n), key=lambda i: scores[i] + scores[n + i])[:self.exchange_keep]]

    def _move(self, seqs: list[list[int]]) -> None:
        """A token moved to another position, of another sentence or its own: the `MOVE_SOURCES` positions whose
        token is least supported there (not placed there by the pins, then its rank among the position's options)
        each send it to one of the `MOVE_TARGETS` positions where it ranks above the token standing there (by how
        far), its own place taking one of its first `MOVE_REFILLS` other options; the one move of least box misfit
        below the batch's, if any, is kept per source (a trial: one gradient per sentence it changes); none inside
        the box."""
        options = options_by_length(self, seqs)
        placed = getattr(self.pins, "placed", None) or {}

        def rank(b: int, p: int, t: int) -> int:
            row = options[len(seqs[b])][p]
            return row.index(t) if t in row else len(row)

        def unfit(b: int, p: int) -> tuple[bool, int]:
            return (not placed or p not in placed.get(seqs[b][p], ())), rank(b, p, seqs[b][p])

        spots = [(b, p) for b in range(len(seqs)) for p in range(1, len(seqs[b]) - 1)]
        sources = sorted((s for s in spots if unfit(*s)[1] > 0), key=lambda s: unfit(*s), reverse=True)
        for b, p in sources[:MOVE_SOURCES]:
            if self._best <= 0:
                return
            t = seqs[b][p]
            gain = {(c, q): rank(c, q, seqs[c][q]) - rank(c, q, t) for c, q in spots if seqs[c][q] != t}
            targets = sorted((s for s in gain if gain[s] > 0), key=lambda s: -gain[s])[:MOVE_TARGETS]
            refills = [u for u in options[len(seqs[b])][p] if u != t][:MOVE_REFILLS]
            lacking, below, tried = missing(seqs, self.cover), [], {}  # two sentences' trials repeat
            for u in refills:
                for c, q in targets:
                    trial = [list(s) for s in seqs]
                    trial[b][p], trial[c][q] = u, t
                    if budget_now() >= self._deadline or (self.cover and missing(trial, self.cover) > lacking):
                        continue
                    if c == b:
                        grads = {b: self.gradient(trial[b], self._labels[b])}
                    else:
                        for i in (b, c):
                            if (i, tuple(trial[i])) not in tried:
                                tried[i, tuple(trial[i])] = self.gradient(trial[i], self._labels[i])
                        grads = {i: tried[i, tuple(trial[i])] for i in (b, c)}
                    total = self._total + sum(g - self._own[i] for i, g in grads.items()) / self._B
                    value = self.misfit(total)
                    if value < self._best:
                        self._offer(below, (value, trial, grads, total))
            found = self._guarded(below, lambda f: {i: f[1][i] for i in f[2]})
            if found is not None:
                value, trial, grads, total = found
                self._keep_change(seqs, value, {i: (trial[i], g) for i, g in grads.items()}, total)
                self.moves += 1
