"""A pinned token put back at its place, a run cut out elsewhere (`update_repair.BoxRepair.fill`, `exact-update`'s
option `repair_pin_fill`; session 48, off).

The pins (`update_batch_positions`) place some tokens at one position each (SST-2 dev batch 0 of 4, lr 1e-4: every
token placed was placed right). Where the batch holds a placed token at that position in no sentence (an orphan),
the token repair may be in a basin that none of its moves leaves: a substitution at the position takes out the token
standing there, and the sentence's tokens after it stand one or two places off. So at a block sweep
(`update_repair_blocks.block_sweep`: after a sweep that changed nothing), a sentence that no block move nor pair
lowered tries each orphan put in at its position with a run of 1 to `LONGEST` tokens cut out elsewhere to keep the
length: the new run (as long as the cut one) covers the position, its other tokens one of those the repair tries
there (`BoxRepair.options`). These are screened like the pairs (the `fill` of least [CLS] score weighed on the box
misfit), and where none lowers it alone, one that takes a token of `cover` out of the batch is weighed with that token
put back into another sentence (`update_repair_pairs.refill`).

Why (ground truth, `recipes/measured/fedavg_rt_lr4_s48/`): RT dev batch 0 of 4 at K 8, lr 1e-4, the defaults' end
at 600 CPU s (box misfit 8.58e-5, 2 of 4 exact) holds "the storytelling may be a ##ally ordinary , cast" for "... may
be ordinary , but the cast", and "... them at but same time" for "... at the same time", where ##ally belongs in the
other sentence ("characteristic ##ally"). "but" is placed at position 7 alone, where no sentence holds it. The only
truthward substitutions that lower the misfit take "but" out of the batch ("but" -> "the": 8.13e-5); the block move
of "a ##ally" after "," climbs (1.17e-4; 127th of the sentence's 2,450 moves of runs up to 2 on the screen), as do
the screen's first neighbouring pairs. With "a ##ally" cut out and "but the" put in at 7 the sentence is true (5.41e-5
with ##ally gone from the batch), and with ##ally put back into the other sentence at its own placed position 7.12e-5.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

from ..core.budget import now as budget_now
from .update_repair_moves import least_screened
from .update_repair_pairs import refill

#: the longest run cut out (and put in: a run of n tokens has up to 16^(n-1) fills a place at width 16)
LONGEST = 2
#: the gate: no fills while the batch has more orphans than this (RT b4 lr 1e-4 dev 0: 6 at the defaults' 600 CPU s
#: end, where the move made slot 3 exact; 22+ at the option's first block sweep, whose 59k fills took the budget)
MOST_ORPHANS = 8
#: the fills screened a sentence at most, the first in `pin_fills`' order (that end: 3,400-6,300 a sentence)
MOST_FILLS = 8000


def orphans(seqs: Sequence[Sequence[int]], placed: dict) -> list[tuple[int, int]]:
    """(token, position) for each position the pins place a token at (`placed`: token -> positions) where no sentence
    of `seqs` holds it, in order of the token then the position."""
    held = {(t, p) for s in seqs for p, t in enumerate(s)}
    return [(t, p) for t in sorted(placed) for p in sorted(placed[t]) if (t, p) not in held]


def pin_fills(seq: Sequence[int], wanted: Sequence[tuple[int, int]], options: Sequence[Sequence[int]],
              longest: int = LONGEST, most: int | None = None) -> list[list[int]]:
    """The sentence `seq` ([CLS] ... [SEP], both kept) with a run of 1 to `longest` inner tokens cut out and as many
    put in at a place of what is left such that the new run covers position p of a `wanted` (token t, p), with t at p
    and each other new token at position q one of `options[q]`; distinct, not `seq` itself, in order of the wanted,
    the cut run's start, its length, the place, then the options'; the first `most` of them (None: all), the rest
    never built."""
    return list(itertools.islice(_fills(seq, wanted, options, longest), most))


def _fills(seq: Sequence[int], wanted: Sequence[tuple[int, int]], options: Sequence[Sequence[int]],
           longest: int) -> Iterator[list[int]]:
    """`pin_fills`' trials, one at a time."""
    seen, m = {tuple(seq)}, len(seq)
    for t, p in wanted:
        if not 0 < p < m - 1:
            continue
        for i in range(1, m - 1):
            for n in range(1, min(longest, m - 1 - i) + 1):
                rest = list(seq[:i]) + list(seq[i + n:])
                for k in range(max(1, p - n + 1), min(p, m - 1 - n) + 1):
                    rows = [[t] if q == p else options[q] for q in range(k, k + n)]
                    for fill in itertools.product(*rows):
                        trial = rest[:k] + list(fill) + rest[k:]
                        if tuple(trial) not in seen:
                            seen.add(tuple(trial))
                            yield trial


def fill_step(repair: Any, seqs: list[list[int]], b: int) -> bool:
    """Option `repair_pin_fill` (`repair.fill`; 0 off): sentence b of `seqs` tries the batch's orphans (`orphans` of
    the pins' `placed`) put in at their places (`pin_fills`), the `fill` of least screen score weighed
    (`repair.keep_best`), else refilled (`refill`, where the repair has a `cover`). Counted in `repair.fills_kept`
    (`pairs_refilled` counts the refills), the trials the screen left out in `repair.fills_screened`; nothing without a
    screen, placed tokens or orphans, with more than `MOST_ORPHANS` orphans, or once the budget has ended; at most
    `MOST_FILLS` fills screened. Whether one was kept (changing `seqs` in place)."""
    count = int(getattr(repair, "fill", 0) or 0)
    if count <= 0:
        return False
    placed = getattr(getattr(repair, "pins", None), "placed", None)
    if repair.screen is None or not placed or budget_now() >= repair._deadline:
        return False
    wanted = orphans(seqs, placed)
    if not wanted or len(wanted) > MOST_ORPHANS:
        return False
    fills = pin_fills(seqs[b], wanted, repair.options(len(seqs[b])), most=MOST_FILLS)
    kept, left_out = least_screened(repair, fills, count)
    repair.fills_screened += left_out
    if repair.keep_best(seqs, b, kept) or (repair.cover and refill(repair, seqs, b, kept)):
        repair.fills_kept += 1
        return True
    return False
