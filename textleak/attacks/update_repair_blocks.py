"""Block moves in the token repair (`update_repair.BoxRepair`, `exact-update`'s option `repair_block`; session 37,
on (4) since session 39).

A block move cuts a run of 1 to `longest` inner tokens out of a sentence and puts it back at any other place of the
same sentence (equivalently, two neighbouring runs trade places, the shorter of them at most `longest` long). Session
36's slides (`update_repair_moves.slides`) are the runs of one token, up to a few places away.

Why (ground truth, scratch, `recipes/measured/fedavg_small_lr5_s37`): SST-2 dev batch 1 of 4 at K 8, lr 1e-5 ends
(800 CPU s, 0.994, 3 of 4 exact, box misfit 3.53e-5) with one sentence in the wrong order: "the intelligence level be
low and very low very low , of the characters must very , ..." for "the intelligence level of the characters must be
low , very low , very very low , ...". No single substitution toward the truth lowers the misfit, but moving the run
"of the characters must" back after "level" takes it to 7.2e-6, then "and" -> "," to 2.3e-6 and the run "very low" one
place on to 0 (the truth): every step of that path lowers the misfit, in every order. Among the 2,171 block moves
of runs up to 8 tokens of that sentence, the [CLS] spans' score (`update_cls.ClsSpans.score`, one forward a trial)
ranks both moves first. So each sentence's block moves are screened by that score and only the `keep` of least
score get a gradient (a backward each). A sentence of n inner tokens has about n x n x `longest` block moves (at
`longest` 4: 1,620 for that 24-token sentence, about 7 CPU s of forwards; 5,796 for SST-2 dev batch 0's 42), so they
are tried only in a sweep where the sentence's substitutions, swaps and slides changed nothing (`BoxRepair.run`).

Measured: from that end the repair without block moves changes nothing; with `repair_block=4` it reaches the truth
(misfit 0, 4 of 4 exact) in 241 CPU s. In the attack at 800 CPU s, side by side, it lost ROUGE-2 (0.899 against
0.939, 3 of 4 exact in both): `cls_lengths="race"` repairs the traded batch first, the block moves kept that repair
going, and the untraded start, the one kept, had 175 CPU s against 408. Off then; since session 38 they wait for a
sweep that changed nothing and stay out of the traded start (`BLOCK_AT_DEFAULT`), on by default since session 39.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from ..core.budget import now as budget_now
from .update_repair_moves import KEEP, SCREEN_CHUNK, least_screened  # noqa: F401 (KEEP, SCREEN_CHUNK: re-exported)
from .update_repair_fill import fill_step
from .update_repair_pairs import pair_step
from .update_repair_peeled import peeled_screen

#: option `repair_block_at`'s values (`BoxRepair.block_at`): "sweep" (session 37), each sentence that nothing else
#: changed in a sweep tries its block moves; "stall" (session 38), only a sweep that changed nothing ends with every
#: sentence's (`block_sweep`), and with `cls_lengths="race"` the traded start's repair tries none
#: (`update_small_lr.repair_guess`): the moves cost nothing while cheaper changes go on, nor in the start that loses
BLOCK_AT = ("sweep", "stall")
#: option `repair_block_at`'s default, the one place it is set (`BoxRepair.block_at`, `UpdateExact.repair_block_at`):
#: "stall" since session 38 (SST-2 batch 4, K 8, lr 1e-5 dev 1 at 800 CPU s: 1.000 / 1.000 against 0.981 / 0.939)
BLOCK_AT_DEFAULT = "stall"


def traded_blocks_off(attack: Any, race: bool, block_at: str) -> bool:
    """Whether the race's traded start (`cls_lengths="race"`, `update_small_lr.repair_guess`) is repaired without
    block moves: with `block_at` "stall", unless option `repair_block_traded` (off) gives them to it too.
    Why the option (session 40, ground truth in `recipes/measured/fedavg_small_lr5_s40`): on SST-2 dev batch 0 of 4,
    K 8, lr 1e-5 the traded start's repair runs out (800 CPU s: 640 in the repair, 85 changes), so the untraded
    start never runs and no block move is ever tried; from that end the block move that puts "ever" back in "why he
    keeps being cast ... are ever any good" (3 tokens right, that sentence exact) lowers the box misfit 2.41e-4 ->
    2.31e-4 and ranks first of its sentence's 596 on the [CLS] screen. With `repair_block_short` it reads dev 0 at
    0.940 / 0.750 against 0.927 / 0.718 but dev 1 at 0.963 / 0.868 against 1.000 / 1.000, side by side
    (`block_sweep`)."""
    return race and block_at == "stall" and not getattr(attack, "repair_block_traded", False)


@contextmanager
def late_blocks(repair: Any, on: bool) -> Iterator[None]:
    """Within the block, `repair.block_late` is True where `on` (option `repair_block_late`, for the race's traded
    start: `block_due`), else left as it is; restored on the way out, an exception's included."""
    late = repair.block_late
    repair.block_late = late or on
    if on:
        repair.late_stalls, repair.owed_paid, repair._owed = [], [], False
    try:
        yield
    finally:
        repair.block_late = late


def block_due(repair: Any, deadline: float) -> bool:
    """Whether a sweep of `repair` that changed nothing ends with a block sweep: always, unless `repair.block_late`
    (option `repair_block_late`, on since session 41: the race's traded start, which otherwise has none); then only
    where the time left to `deadline` is less than what this repair has spent since it began (`BoxRepair.begin`), so
    the race could not give the untraded start what the traded one took; each such stall's (spent, left, due) in
    `repair.late_stalls`. Why (session 40, `recipes/measured/fedavg_small_lr5_s40`, SST-2 b4 K 8 lr 1e-5, 800 CPU s):
    on dev 0 the traded repair runs out, so the race never runs and its block moves cost nothing; on dev 1 it stops
    and the untraded start wins the race (1.000 / 1.000 at 420 CPU s), which block moves in the traded start cut to
    108 (0.963 / 0.868). Session 41 (`fedavg_small_lr5_s41`, side by side, load ~8.7): dev 0 0.927 / 0.751, 2 of 4
    exact (one block sweep at its last stall, the 18-token sentence's move kept) against 0.927 / 0.727, 1 of 4; dev 1
    0.994 / 0.966 against 0.994 / 0.953 (no block sweep in the traded start: the race's untraded start had 383.7 CPU s
    against 380.6)."""
    if not getattr(repair, "block_late", False):
        return True
    spent, left = _spent_left(repair, deadline)
    repair.late_stalls = [*repair.late_stalls, (round(spent, 1), round(left, 1), left < spent)]
    return left < spent


def _spent_left(repair: Any, deadline: float) -> tuple[float, float]:
    """(CPU s `repair` has spent since it began, CPU s left to `deadline`), on the budget's clock."""
    t = budget_now()
    return t - repair._began, deadline - t


def stall_blocks(repair: Any, seqs: list[list[int]], order: Iterable[int], deadline: float, stalled: bool) -> bool:
    """The end of one of `repair`'s sweeps (`BoxRepair.run`): where it `stalled` (changed nothing, block moves at
    "stall") and `block_due`, the block sweep (`block_sweep`). Option `repair_block_owed` (`repair.block_owed`, on in
    `exact-update` since session 46): a stall whose block sweep was not due leaves it owed, and it is paid at the end of
    the first later sweep where less time is left than was spent (the sweeps go on changing things, so no later stall
    may come); `repair.owed_paid` records each payment's (spent, left, changes kept). Returns whether a paid sweep kept
    a change (then the repair's screened sweeps go on: cheap changes may follow a block move). Why (session 46,
    `recipes/measured/fedavg_owed_s46`): SST-2 b4 K 8 lr 1e-5 dev 0 at 800 CPU s ends at 0.980 (misfit 6.7e-5) where its
    traded start's screened sweeps stall after half its time (366 CPU s spent, 274 left: the block sweep ran, kept the
    move that makes a sentence exact, and the screened sweeps went on), and at 0.944-0.952 (1.94e-4) where that stall
    comes earlier (318 spent, 381 left; 330.6 / 330.7): no block sweep, then full sweeps that change something each time
    until the budget ends, so no stall comes again and the block move is never tried. Side by side at 1000 CPU s both
    arms stalled early (403 spent, 467 left): the defaults 0.952 / 0.735, 1 of 4 (the trap); owed, paid at 486 / 384,
    0.984 / 0.875, 3 of 4, misfit 5.0e-5. At 800 CPU s and on dev 1 both arms made the same decisions."""
    if stalled and block_due(repair, deadline):
        repair._owed = False
        block_sweep(repair, seqs, order)
        return False
    if not getattr(repair, "block_owed", False):
        return False
    if stalled:
        repair._owed = True
        return False
    if not repair._owed or repair._best <= 0:
        return False
    spent, left = _spent_left(repair, deadline)
    if left >= spent:
        return False
    repair._owed, before = False, repair._changes
    block_sweep(repair, seqs, order)
    repair.owed_paid = [*repair.owed_paid, (round(spent, 1), round(left, 1), repair._changes - before)]
    return repair._changes > before


@contextmanager
def blocks_off(repair: Any, off: bool) -> Iterator[None]:
    """Within the block, `repair.block` is 0 (no block moves) where `off`, else left as it is; restored on the way
    out, an exception's included (the traded start's repair with `repair_block_at="stall"`, `repair_guess`)."""
    block = repair.block
    if off:
        repair.block = 0
    try:
        yield
    finally:
        repair.block = block


def blocks(seq: Sequence[int], longest: int) -> list[list[int]]:
    """The sentence `seq` ([CLS] ... [SEP], both kept) with one run of 1 to `longest` inner tokens cut out and put
    back at another place; distinct, not `seq` itself, in order of the run's start, its length, then the place."""
    out, seen, n = [], {tuple(seq)}, len(seq)
    for i in range(1, n - 1):
        for j in range(i + 1, min(n - 1, i + longest) + 1):
            run, rest = list(seq[i:j]), list(seq[:i]) + list(seq[j:])
            for k in range(1, len(rest)):  # before rest[k]: the last place is just before [SEP]
                trial = rest[:k] + run + rest[k:]
                if tuple(trial) not in seen:
                    seen.add(tuple(trial))
                    out.append(trial)
    return out


def block_step(repair: Any, seqs: list[list[int]], b: int) -> bool:
    """Sentence b of the batch `seqs` (changed in place) replaced by its screened block move (`screened_blocks`) of
    least box misfit where that lowers the batch's (`repair.keep_best`); counted in `repair.blocks_kept`. Whether it
    was."""
    if repair.keep_best(seqs, b, screened_blocks(repair, seqs[b], peeled_screen(repair, seqs, b))):
        repair.blocks_kept += 1
        return True
    return False


def block_sweep(repair: Any, seqs: list[list[int]], order: Iterable[int]) -> None:
    """Option `repair_block_at="stall"`: after a sweep of `repair` that changed nothing, each sentence b of `seqs`
    (changed in place) in `order` in turn takes its best screened block move (`block_step`) where that lowers the
    batch's misfit; a move kept makes the sweep one that changed something, so the cheaper changes go on from it.
    With `repair.block_short` (option `repair_block_short`, off) or `repair.block_late` (option `repair_block_late`,
    on since session 41: little time left by `block_due`) the shortest sentences first, `order` on a tie: a
    sentence of n inner tokens screens ~4 n^2 block moves, so a long one's screen can take the rest of the budget.
    Session 40 (`recipes/measured/fedavg_small_lr5_s40`, SST-2 dev 0 of 4, K 8, lr 1e-5, 800 CPU s, with
    `repair_block_traded`): the one block sweep screened the 44-token sentence's 5,779 moves (none kept) and the
    budget ended before the 18-token sentence's 596, whose first-ranked move makes that sentence exact. With both
    options, side by side at 800 CPU s: dev 0 0.940 / 0.750 (2 of 4 exact) against 0.927 / 0.718 (1), dev 1 0.963 /
    0.868 (2) against 1.000 / 1.000 (4, certified): the traded start's block moves took the race's time. Off."""
    if getattr(repair, "block_short", False) or getattr(repair, "block_late", False):
        order = sorted(order, key=lambda i: len(seqs[i]))  # stable: `order` on a tie
    for b in order:
        if not block_step(repair, seqs, b) and not pair_step(repair, seqs, b):  # option `repair_pairs`
            fill_step(repair, seqs, b)  # option `repair_pin_fill` (off): no block move nor pair lowered it


def screened_blocks(repair: Any, seq: Sequence[int], screen: Any = None) -> list[list[int]]:
    """Sentence `seq`'s block moves (runs up to `repair.block` long) to weigh (`least_screened`); none without a
    screen (batch 1, or option `repair_screen` 0: all of them would cost a backward each) or where the budget has
    ended. One screen call for all of a long sentence's thousands of moves could run past the deadline (RT batch 4,
    session 39, `fedavg_rt_blocks_s39/`: on an 800 CPU s budget the block moves' arm took 842.6 CPU s against the
    defaults' 829.0, likely this call; not checked). `repair.block_screened` counts the moves left out, scored or
    not. Option `repair_block_keep` (`repair.block_keep`; 0: the screen's `keep`) sets how many are weighed; `screen`
    (option `repair_block_peeled`: `update_repair_peeled.peeled_screen`) replaces `repair.screen` where given."""
    if repair.screen is None or budget_now() >= repair._deadline:
        return []
    kept, left_out = least_screened(repair, blocks(seq, repair.block), getattr(repair, "block_keep", 0), screen)
    repair.block_screened += left_out
    return kept
