"""Option `repair_block_owed` (`update_repair_blocks.stall_blocks`, session 46, on by default): with
`repair_block_late` a screened sweeps' stall whose block sweep is not yet due (more time left than spent) leaves it
owed; it is paid at the end of the first later sweep where less time is left than was spent, though that sweep
changed something. Without it the full sweeps that follow such a stall may change something every time until the
budget ends, so the block move is never tried (SST-2 b4 K 8 lr 1e-5 dev 0: 0.944-0.952 against 0.980 at 800 CPU s,
0.952 against 0.984 side by side at 1000, `recipes/measured/fedavg_owed_s46`)."""

from __future__ import annotations

import time

import pytest

from test_update_repair_blocks import TRUTH, _guess, _race, _toy, _wrong
from textleak.attacks import update_repair_blocks
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair_blocks import late_blocks

REAL = update_repair_blocks.budget_now  # the budget's clock, before any test moves it


def _box(owed: bool):
    """The block tests' toy (sentence 0 needs the block move "4 5 6" back to its end), block moves at a stall, late;
    sentence 1 holds 14 for 12, which only a full sweep finds: the screen (keep 1) ranks 15 first, a trial that lowers
    nothing. One full sweep allowed after the screened ones."""
    box = _toy(3, at="stall")
    wrong = _wrong()
    box.keep, box.sweeps, box.block_owed = 1, 1, owed
    box.options = lambda n: [[t] for t in wrong[0]] if n == len(wrong[0]) else [[101], [11], [14, 15, 12], [13], [102]]
    plain = box.screen

    def screen(trials):
        return [0.0 if len(t) == 5 and t[2] == 15 else 1.0 + s for t, s in zip(trials, plain(trials))]
    box.screen = screen
    return box


def _run(monkeypatch, owed: bool):
    """The toy run late from a stall that came with ~600 s left and ~0 spent; from then on the clock reads 400 s
    later (400 spent, ~200 left). Returns (the batch, the report, the repair)."""
    box = _box(owed)
    monkeypatch.setattr(update_repair_blocks, "budget_now", lambda: REAL() + (400 if box.late_stalls else 0))
    wrong = _wrong()
    wrong[1][2] = 14
    with late_blocks(box, True):
        got, report = box.run(wrong, [0, 0], time.monotonic() + 600, exchange=False)
    return got, report, box


def test_an_owed_block_sweep_is_paid_once_late_though_the_full_sweep_changed_something(monkeypatch):
    got, off, box = _run(monkeypatch, owed=False)
    assert box.late_stalls[0][2] is False and len(box.late_stalls) == 1  # the screened stall: not due
    assert got == [_wrong()[0], TRUTH[1]]  # the full sweep found 12; the block move never tried
    assert off["screened_sweeps"] == 1 and off["sweeps"] == 1 and off["blocks_kept"] == 0 and "block_owed" not in off
    assert box._screening is False  # full sweeps to the end
    got, on, box = _run(monkeypatch, owed=True)
    assert got == TRUTH and on["blocks_kept"] == 1 and on["misfit_after"] == 0
    assert len(on["block_owed"]) == 1 and on["block_owed"][0][2] == 1  # paid once, one change kept
    spent, left, _ = on["block_owed"][0]
    assert spent > 399 and 0 < left < 201
    assert box._owed is False
    assert box._screening is True  # a paid block move sends the repair back to screened sweeps


def test_a_due_stall_pays_what_is_owed_and_the_option_off_owes_nothing(monkeypatch):
    """A stall whose block sweep is due clears the debt (no second sweep); off, no stall is owed."""
    box = _box(True)
    box._owed, box.late_stalls, box.owed_paid = True, [], []
    box._began, box._best, box._changes = update_repair_blocks.budget_now() - 500, 1.0, 0
    swept = []
    monkeypatch.setattr(update_repair_blocks, "block_sweep", lambda repair, seqs, order: swept.append(1))
    box.block_late = True
    assert update_repair_blocks.stall_blocks(box, [], [0], update_repair_blocks.budget_now() + 100, True) is False
    assert swept == [1] and box._owed is False and box.owed_paid == []
    box.block_owed, box._began = False, update_repair_blocks.budget_now()
    assert update_repair_blocks.stall_blocks(box, [], [0], update_repair_blocks.budget_now() + 600, True) is False
    assert box._owed is False and swept == [1]


def test_option_repair_block_owed_reaches_the_repair_and_is_checked(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert UpdateExact().repair_block_owed is True  # on since session 46
    assert attack_instance("exact-update", {"repair_block_owed": True}, 0).repair_block_owed is True
    with pytest.raises(InputError, match="repair_block_owed"):
        attack_instance("exact-update", {"repair_block_owed": "x"}, 0)
    _, made = _race(monkeypatch)
    for value in (False, True):
        _guess(monkeypatch, "stall", repair_block_late=True, repair_block_owed=value)
        assert made[-1].block_owed is value
