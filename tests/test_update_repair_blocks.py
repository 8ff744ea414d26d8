"""The token repair's block moves (`update_repair_blocks`, `BoxRepair.block`, `exact-update`'s option `repair_block`):
a run of up to `block` inner tokens cut out of a sentence and put back anywhere else in it, each sentence's moves
screened by the repair's `screen` (the [CLS] score in the attack) and the least-scored weighed on the misfit. A sentence
whose run of three tokens stands at the wrong end is repaired by one block move, where no substitution, swap or slide
of one token can (SST-2 dev batch 1 of 4 at K 8, lr 1e-5: "of the characters must" eight places off; session 37).
The option reaching the repair is tested with `repair_slide`'s, in `test_update_repair_slide`."""

from __future__ import annotations

import time

import pytest

from test_update_repair_slide import _toy as slide_toy
from textleak.attacks import update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_blocks import KEEP, SCREEN_CHUNK, blocks, screened_blocks

TRUTH = [[101, 1, 2, 3, 4, 5, 6, 102], [101, 11, 12, 13, 102]]


def test_blocks_move_one_run_anywhere_and_keep_the_ends():
    seq = [101, 1, 2, 3, 4, 5, 102]
    got = blocks(seq, 2)
    assert [101, 3, 4, 5, 1, 2, 102] in got  # the run "1 2" to the end
    assert [101, 5, 1, 2, 3, 4, 102] in got  # one token four places back: beyond a slide of width 2
    assert [101, 4, 5, 1, 2, 3, 102] in got  # "4 5" to the front (equally "1 2 3" to the end)
    assert [101, 5, 4, 1, 2, 3, 102] not in got  # two runs moved
    assert [101, 1, 5, 2, 3, 4, 102] in got and [101, 2, 3, 4, 5, 1, 102] in got
    assert all(s[0] == 101 and s[-1] == 102 and sorted(s) == sorted(seq) for s in got)
    assert seq not in got and len({tuple(s) for s in got}) == len(got)
    assert len(blocks(seq, 3)) == len(got)  # a run of 3 of 5 moved is a run of 2 moved the other way
    six = [101, 1, 2, 3, 4, 5, 6, 102]
    assert [101, 4, 5, 6, 1, 2, 3, 102] in blocks(six, 3) and [101, 4, 5, 6, 1, 2, 3, 102] not in blocks(six, 2)
    assert blocks([101, 7, 102], 4) == []
    assert blocks([101, 1, 1, 102], 4) == []  # moving a token among copies of itself changes nothing


def _toy(block: int, screened: bool = True, at: str = "sweep") -> BoxRepair:
    """The slide tests' toy descent (a sentence's gradient one-hot in (position, token), the box 0, no slides) on this
    module's batch: each position offers only the token standing there in the wrong batch (no substitution can help);
    the screen counts the positions a trial holds off the true sentence of its length. Block moves at `at` (session
    37's "sweep" unless told: the tests below that pin a schedule were written for it)."""
    box = slide_toy(0)
    box.block, box.blocks_kept, box.block_screened, box.block_at = block, 0, 0, at
    box.U = sum(box.gradient(s, 0) for s in TRUTH) / len(TRUTH)
    wrong = _wrong()
    box.options = lambda n: [[t] for t in next(s for s in wrong if len(s) == n)]
    if screened:
        truth = {len(s): s for s in TRUTH}
        box.screen = lambda trials: [float(sum(a != b for a, b in zip(t, truth[len(t)]))) for t in trials]
    return box


def _wrong():
    """The truth with the run "4 5 6" moved to the front of sentence 0 ("4 5 6 1 2 3")."""
    return [[101, 4, 5, 6, 1, 2, 3, 102], [101, 11, 12, 13, 102]]


def test_a_block_move_repairs_a_run_at_the_wrong_end_where_one_token_moves_cannot():
    got, off = _toy(0).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and off["changes"] == 0 and "block" not in off
    box = _toy(3)
    made = box.trials  # the toy's U made
    got, on = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["misfit_after"] == 0 and on["changes"] == 1
    assert on["block"] == 3 and on["blocks_kept"] == 1 and on["block_screened"] == len(blocks(_wrong()[0], 3)) - KEEP
    # the batch and KEEP moves of sentence 0; none of sentence 1: the batch is inside the box (misfit 0)
    assert box.trials - made == 2 + KEEP
    # without a screen no block move is weighed (each would cost a gradient)
    got, bare = _toy(3, screened=False).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and bare["blocks_kept"] == 0 and bare["block_screened"] == 0


def test_a_sentence_changed_by_a_substitution_tries_no_block_move_in_that_sweep():
    box = _toy(3)
    wrong = _wrong()
    wrong[1][2] = 14  # "11 14 13": the substitution 14 -> 12 repairs it
    box.options = lambda n: [[t] for t in wrong[0]] if n == len(wrong[0]) else [[101], [11], [14, 12], [13], [102]]
    made = box.trials
    got, on = box.run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["changes"] == 2 and on["blocks_kept"] == 1
    # the batch, KEEP moves of sentence 0; sentence 1: its substitution, no block (nor the changed token's two swaps:
    # the batch is inside the box)
    assert box.trials - made == 2 + KEEP + 1


def test_at_a_stall_block_moves_wait_for_a_sweep_that_changed_nothing():
    """`repair_block_at="stall"` (`BoxRepair.block_at`, session 38): sentence 0 needs a block move, sentence 1 a
    substitution. "sweep" tries sentence 0's block moves in the first sweep (nothing else changed sentence 0 there);
    "stall" tries none in a sweep that changed anything, so one sweep repairs sentence 1 alone, and the block moves
    come in the second sweep, which changed nothing else, each sentence's in turn."""
    wrong = _wrong()
    wrong[1][2] = 14  # "11 14 13": the substitution 14 -> 12 repairs it

    def box(at: str, sweeps: int) -> BoxRepair:
        made = _toy(3)
        made.block_at, made.sweeps = at, sweeps
        made.options = lambda n: [[t] for t in wrong[0]] if n == len(wrong[0]) else [[101], [11], [14, 12], [13], [102]]
        return made
    got, sweep = box("sweep", 1).run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and sweep["blocks_kept"] == 1 and sweep["block_at"] == "sweep"
    got, one = box("stall", 1).run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == [_wrong()[0], TRUTH[1]] and one["changes"] == 1 and one["blocks_kept"] == 0
    assert one["block_screened"] == 0  # no block move even screened
    stall = box("stall", 2)
    made = stall.trials
    got, two = stall.run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and two["changes"] == 2 and two["blocks_kept"] == 1 and two["block_at"] == "stall"
    # the batch; sweep 1: sentence 1's substitution and its two swaps; sweep 2: the same three trials back (none kept),
    # then KEEP block moves of sentence 0, none of sentence 1's (the batch is inside the box)
    assert stall.trials - made == 2 + 3 + 3 + KEEP


def _race(monkeypatch, fail: bool = False) -> tuple[list, list]:
    """`update_small_lr.repair_guess` with the starts and the repair stubbed (`cls_lengths="race"`, the default): a
    `BoxRepair` spy whose `run` records (the start's first inner token: 1 the traded start, 7 the untraded one; block;
    block_at) and, with `fail`, raises in the traded start's repair. Returns the records and the spies made."""
    from types import SimpleNamespace

    seen, made = [], []

    class Spy(BoxRepair):
        def __init__(self, *args, **kw):
            self.block, self.vocab, self.layout = kw["block"], args[3], SimpleNamespace(device="cpu")
            made.append(self)

        def run(self, sequences, labels, deadline, order=None, exchange=True):
            seen.append((sequences[0][1], self.block, self.block_at))
            if fail and sequences[0][1] == 1:
                raise RuntimeError("the traded start's repair failed")
            return [list(s) for s in sequences], {"misfit_after": 1e-3 if sequences[0][1] == 7 else 2e-3, "cpu_s": 0.0}
    monkeypatch.setattr(update_small_lr, "BoxRepair", Spy)
    monkeypatch.setattr(update_small_lr, "vocabulary", lambda *a: (SimpleNamespace(), None))
    monkeypatch.setattr(update_small_lr, "_starts", lambda *a: ([[101, 7, 2, 102], [101, 3, 102]], [0, 1]))
    for name, stub in [("_cls_scores", None), ("layout_for", None), ("ids_to_text", ""), ("declared_batch", 2)]:
        monkeypatch.setattr(update_small_lr, name, lambda *a, _stub=stub: _stub)
    return seen, made


def _guess(monkeypatch, at: str, **options):
    """`repair_guess` run once on the stubs of `_race` with `repair_block=4`, `repair_block_at=at` (and `options`;
    `repair_block_late` off unless given: the other options' tests describe the traded start without it); its output."""
    from types import SimpleNamespace

    from conftest import embedding_pins

    ids = [[101, 1, 2, 102], [101, 3, 102]]
    attack = UpdateExact(repair_block=4, repair_block_at=at, **{"repair_block_late": False, **options})
    attack._fits = None
    monkeypatch.setattr(attack, "_layer0", lambda *a: (None, None))
    monkeypatch.setattr(attack, "_batch_pins", lambda *a: embedding_pins(ids))
    monkeypatch.setattr(attack, "_certify", lambda *a: None)
    out = SimpleNamespace(prediction={"token_ids": ids, "labels": [0, 1]}, details={})
    model = SimpleNamespace(model=None, tokenizer=None)
    update_small_lr.repair_guess(attack, SimpleNamespace(gradients=None, task="classify"), model, model, None, out, {})
    return out


def test_option_repair_block_at_stall_keeps_block_moves_out_of_the_traded_starts_repair(monkeypatch):
    """With `cls_lengths="race"` (the default) the traded start is repaired first and the untraded one only where
    that repair stops; `repair_block_at="stall"` repairs the traded start without block moves (session 37: they kept
    that repair going, and the untraded start, the one kept, had 175 CPU s against 408), the untraded with them;
    "sweep" repairs both with them. Checked on `update_small_lr.repair_guess` with the starts and the repair stubbed."""
    seen, _ = _race(monkeypatch)
    for at in ("sweep", "stall"):
        out = _guess(monkeypatch, at)
        assert out.details["cls_lengths_race"]["kept"] == "untraded" and out.prediction["token_ids"][0][1] == 7
    # (the start's first inner token: 1 the traded start, 7 the untraded one; block; block_at)
    assert seen == [(1, 4, "sweep"), (7, 4, "sweep"), (1, 0, "stall"), (7, 4, "stall")]


def test_option_repair_block_traded_gives_the_traded_starts_repair_block_moves(monkeypatch):
    """Option `repair_block_traded` (off; session 40): with `repair_block_at="stall"` the race's traded start is
    repaired with block moves too (SST-2 dev batch 0 of 4, K 8, lr 1e-5: that repair runs out, so the untraded start
    never runs and no block move was ever tried); off, as before, without them; "sweep" gives them to both anyway."""
    seen, _ = _race(monkeypatch)
    for traded in (True, False):
        out = _guess(monkeypatch, "stall", repair_block_traded=traded)
        assert out.details["cls_lengths_race"]["kept"] == "untraded"
    _guess(monkeypatch, "sweep", repair_block_traded=True)
    # (the start's first inner token: 1 the traded start, 7 the untraded one; block; block_at)
    assert seen == [(1, 4, "stall"), (7, 4, "stall"), (1, 0, "stall"), (7, 4, "stall"),
                    (1, 4, "sweep"), (7, 4, "sweep")]
    assert UpdateExact().repair_block_traded is False


@pytest.mark.parametrize("bad", ["x", 2, 0.5])
def test_option_repair_block_traded_is_true_or_false_checked_before_any_work(bad):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("exact-update", {"repair_block_traded": True}, 0).repair_block_traded is True
    with pytest.raises(InputError, match="repair_block_traded"):
        attack_instance("exact-update", {"repair_block_traded": bad}, 0)


def test_option_repair_block_short_sweeps_the_shortest_sentences_first(monkeypatch):
    """Option `repair_block_short` (off; session 40): a block sweep takes the sentences shortest first, the given
    order on a tie (SST-2 dev 0 of 4, K 8, lr 1e-5: the 44-token sentence's 5,779 screened moves took the rest of the
    budget before the 18-token sentence's first-ranked move was weighed); off, the given order; and it reaches the
    repair from the attack's option (`repair_guess`)."""
    from types import SimpleNamespace

    from textleak.attacks import update_repair_blocks
    from textleak.attacks.update_repair_blocks import block_sweep

    seen = []
    monkeypatch.setattr(update_repair_blocks, "block_step", lambda repair, seqs, b: seen.append(b))
    seqs = [[101] + [1] * 9 + [102], [101, 2, 102], [101, 3, 3, 3, 102], [101, 4, 102]]
    block_sweep(SimpleNamespace(block_short=True), seqs, [0, 3, 2, 1])
    block_sweep(SimpleNamespace(block_short=False), seqs, [0, 3, 2, 1])
    block_sweep(SimpleNamespace(), seqs, iter([0, 3, 2, 1]))
    assert seen == [3, 1, 2, 0] + [0, 3, 2, 1] * 2
    _, made = _race(monkeypatch)
    _guess(monkeypatch, "stall", repair_block_short=True)
    assert made[0].block_short is True and UpdateExact().repair_block_short is False


def test_the_traded_starts_repair_failing_leaves_the_block_moves_on(monkeypatch):
    """`repair_guess` turns block moves off for the traded start's repair (`blocks_off`) and back on after it, an
    exception's way out included (session 39; the repair's `block` stayed 0 before)."""
    seen, made = _race(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="traded start"):
        _guess(monkeypatch, "stall")
    assert seen == [(1, 0, "stall")] and made[0].block == 4


def test_the_block_at_default_is_one_value_the_repair_and_the_option_share():
    """`BoxRepair.block_at` and the option `repair_block_at` default to one value, "stall" since session 38 (the
    class read "sweep", session 37's, where the option read "stall"; both from `BLOCK_AT_DEFAULT` since session 39)."""
    assert BoxRepair.block_at == UpdateExact().repair_block_at == "stall"
    from textleak.attacks.update_repair_blocks import BLOCK_AT_DEFAULT

    assert BLOCK_AT_DEFAULT == "stall"


@pytest.mark.parametrize("bad", ["x", 1, None])
def test_option_repair_block_at_is_sweep_or_stall_checked_before_any_work(bad):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().repair_block_at == "stall"  # the default since session 38 (with repair_block on)
    assert attack_instance("exact-update", {"repair_block_at": "sweep"}, 0).repair_block_at == "sweep"
    assert attack_instance("exact-update", {"repair_block_at": "stall"}, 0).repair_block_at == "stall"
    with pytest.raises(InputError, match="repair_block_at"):
        attack_instance("exact-update", {"repair_block_at": bad}, 0)


def test_the_block_screen_stops_where_the_budget_ends_and_weighs_the_best_it_scored():
    """A long sentence's block moves are screened `SCREEN_CHUNK` at a time, the deadline read between chunks (session
    39: one screen call of thousands of forwards could run past the budget): a deadline that passes
    during the first chunk leaves the rest unscored, and the best of the scored moves is weighed."""
    seq = [101] + list(range(1, 25)) + [102]
    every = blocks(seq, 4)
    assert len(every) > 2 * SCREEN_CHUNK
    best_late = every[-1]  # the screen's favourite stands in the last chunk

    box = _toy(4)
    box.keep, box.block, box.block_screened, box._deadline = 0, 4, 0, time.monotonic() + 600
    calls = []

    def screen(trials):
        calls.append(len(trials))
        box._deadline = -1.0  # the budget ends while this chunk is scored
        return [0.0 if t == best_late else 1.0 + k for k, t in enumerate(trials)]
    box.screen = screen
    got = screened_blocks(box, seq)
    assert calls == [SCREEN_CHUNK]
    assert got == every[:KEEP] and best_late not in got
    assert box.block_screened == len(every) - KEEP
    # with time left every chunk is scored and the favourite comes first
    box._deadline, calls[:] = time.monotonic() + 600, []
    box.screen = lambda trials: (calls.append(len(trials)), [0.0 if t == best_late else 1.0 for t in trials])[1]
    got = screened_blocks(box, seq)
    assert sum(calls) == len(every) and max(calls) <= SCREEN_CHUNK and got[0] == best_late


def test_option_repair_block_late_gives_the_traded_start_block_moves_only_late(monkeypatch):
    """Option `repair_block_late` (on since session 41): with `repair_block_at="stall"` the race's traded start is
    repaired with block moves that wait for `block_due` (`block_late` set in its repair only, the shortest sentences
    first); the untraded start as before (blocks, not late); with `repair_block_traded` the traded start's blocks are
    not late. The traded start's stalls go to the details (`block_late`)."""
    from textleak.attacks.update_repair_blocks import block_sweep

    seen, made = _race(monkeypatch)
    late = []
    for options in ({"repair_block_late": True}, {"repair_block_late": True, "repair_block_traded": True},
                    {"repair_block_late": False}):
        out = _guess(monkeypatch, "stall", **options)
        late.append((made[-1].block_late, out.details.get("block_late")))
    assert late == [(False, []), (False, None), (False, None)]  # restored after the traded start's repair
    assert seen == [(1, 4, "stall"), (7, 4, "stall"), (1, 4, "stall"), (7, 4, "stall"),
                    (1, 0, "stall"), (7, 4, "stall")]
    assert UpdateExact().repair_block_late is True  # the default since session 41
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert attack_instance("exact-update", {"repair_block_late": True}, 0).repair_block_late is True
    with pytest.raises(InputError, match="repair_block_late"):
        attack_instance("exact-update", {"repair_block_late": "x"}, 0)
    order = []
    monkeypatch.setattr(update_small_lr, "BoxRepair", BoxRepair)
    from textleak.attacks import update_repair_blocks

    monkeypatch.setattr(update_repair_blocks, "block_step", lambda repair, seqs, b: order.append(b))
    from types import SimpleNamespace

    block_sweep(SimpleNamespace(block_late=True), [[101, 1, 1, 1, 102], [101, 2, 102]], [0, 1])
    assert order == [1, 0]


def test_a_late_repair_sweeps_block_moves_only_with_less_time_left_than_it_spent(monkeypatch):
    """`block_due` (option `repair_block_late`): the toy needs one block move; a late repair with more time left than
    it has spent stops at its stall without it (the race's time kept for the untraded start), one with less left
    makes it; each stall's (spent, left, due) recorded. Not late, the block move comes at once."""
    from textleak.attacks import update_repair_blocks
    from textleak.attacks.update_repair_blocks import late_blocks

    box = _toy(3, at="stall")
    with late_blocks(box, True):
        got, early = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
        assert got == _wrong() and early["blocks_kept"] == 0 and early["block_screened"] == 0
        assert len(box.late_stalls) == 1 and box.late_stalls[0][2] is False and box.late_stalls[0][1] > 500
    assert box.block_late is False
    real = update_repair_blocks.budget_now
    monkeypatch.setattr(update_repair_blocks, "budget_now", lambda: real() + 400)  # 400 s spent, ~200 left
    box = _toy(3, at="stall")
    with late_blocks(box, True):
        got, on = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["blocks_kept"] == 1 and box.late_stalls[0][2] is True
    monkeypatch.setattr(update_repair_blocks, "budget_now", real)
    got, plain = _toy(3, at="stall").run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and plain["blocks_kept"] == 1
