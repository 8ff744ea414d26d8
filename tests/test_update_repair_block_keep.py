"""Option `repair_block_keep` (`update_repair_blocks.screened_blocks`, session 47, off: 0): how many of a sentence's
block moves, those of least [CLS] score, a block sweep weighs on the box misfit (0: the screen's `keep`, 8). From a
1000 CPU s end of SST-2 b4 K 8 lr 1e-5 dev 0 the 44-token sentence's 6 block moves (of 5,698) that lower the misfit
ranked 17-89 on the screen, so none was weighed (`recipes/measured/fedavg_keep_s47`)."""

from __future__ import annotations

import time

import pytest

from test_update_repair_blocks import TRUTH, _guess, _race, _toy, _wrong
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair_blocks import KEEP, blocks


def _box(block_keep: int):
    """The block tests' toy (sentence 0 needs the run "4 5 6" moved back to its end), its screen misled: 10 block
    moves that put no more tokens in place than the wrong sentence holds score below the one that repairs it."""
    box = _toy(3)
    box.block_keep = block_keep
    moves = blocks(_wrong()[0], 3)
    plain = box.screen
    decoys = [m for m in moves if plain([m])[0] >= plain([_wrong()[0]])[0]][:10]
    assert len(decoys) == 10
    box.screen = lambda trials: [-1.0 if t in decoys else plain([t])[0] for t in trials]
    return box, moves


def test_more_block_moves_weighed_find_the_one_the_screen_ranks_eleventh():
    box, moves = _box(0)
    got, off = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and off["blocks_kept"] == 0 and "block_keep" not in off
    assert off["block_screened"] == len(moves) - KEEP
    box, moves = _box(16)
    got, on = box.run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["blocks_kept"] == 1 and on["misfit_after"] == 0 and on["block_keep"] == 16
    assert on["block_screened"] == len(moves) - 16


def test_option_repair_block_keep_reaches_the_repair_off_by_default_checked_before_any_work(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    _, made = _race(monkeypatch)
    _guess(monkeypatch, "stall", repair_block_keep=32)
    assert made[0].block_keep == 32
    _guess(monkeypatch, "stall")
    assert made[-1].block_keep == 0 and UpdateExact().repair_block_keep == 0
    assert attack_instance("exact-update", {"repair_block_keep": 32}, 0).repair_block_keep == 32
    for bad in ("x", -1, 2.5):
        with pytest.raises(InputError, match="repair_block_keep"):
            attack_instance("exact-update", {"repair_block_keep": bad}, 0)
