"""A placed token put back at its place with a run cut out elsewhere (`update_repair_fill`, `BoxRepair.fill`,
`exact-update`'s option `repair_pin_fill`, off): at a block sweep a sentence that no block move nor pair lowered
tries each token the pins place where no sentence holds it (RT dev batch 0 of 4 at K 8, lr 1e-4: "a ##ally
ordinary , cast" for "ordinary , but the cast", "but" placed at 7; session 48)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from test_update_repair_blocks import _guess, _race
from test_update_repair_pairs import _toy as pairs_toy
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair_fill import orphans, pin_fills

#: sentence 0 holds "8" in front and lacks 3, which the pins place at position 3
TRUTH = [[101, 1, 2, 3, 4, 102], [101, 11, 12, 13, 102]]
WRONG = [[101, 8, 1, 2, 4, 102], [101, 11, 12, 13, 102]]


def test_orphans_are_placed_tokens_no_sentence_holds_at_their_place():
    placed = {3: {3}, 1: {1, 2}, 11: {1}}
    assert orphans(WRONG, placed) == [(1, 1), (3, 3)]  # 1 stands at 2, not at 1; 11 at 1 in sentence 1
    assert orphans(TRUTH, placed) == [(1, 2)]
    assert orphans(WRONG, {}) == []


def test_pin_fills_put_the_token_in_at_its_place_and_cut_a_run_out_elsewhere():
    seq = [101, 8, 1, 2, 4, 102]
    options = [[101], [8, 1], [1, 2], [2, 3], [4], [102]]
    got = pin_fills(seq, [(3, 3)], options, longest=1)
    assert [101, 1, 2, 3, 4, 102] in got  # "8" cut, 3 put in at 3
    assert all(len(t) == len(seq) and t[3] == 3 and t[0] == 101 and t[-1] == 102 for t in got)
    assert len(got) == len({tuple(t) for t in got}) and seq not in got
    two = pin_fills(seq, [(3, 3)], options, longest=2)
    assert set(map(tuple, got)) <= set(map(tuple, two))
    assert [101, 2, 4, 3, 4, 102] in two and [101, 2, 4, 3, 4, 102] not in got  # "8 1" cut, "3 4" put in at 3-4
    assert pin_fills(seq, [(3, 5), (3, 0)], options) == []  # [SEP] and [CLS] stay
    assert len(two) > 3 and pin_fills(seq, [(3, 3)], options, longest=2, most=3) == two[:3]  # the first `most`


def _fill_toy(fill: int, placed: dict) -> object:
    """The pairs' toy (identity gradient: only the true sentence lowers the misfit; each position offers its wrong and
    its true token; the screen counts positions off the truth; block moves and pairs on) on WRONG, with pins that
    place `placed` and `repair_pin_fill` = `fill`."""
    box = pairs_toy(8, TRUTH, WRONG)
    box.fill, box.fills_kept, box.fills_screened, box.pairs_refilled = fill, 0, 0, 0
    box.pins = SimpleNamespace(placed=placed)
    return box


def test_a_placed_token_put_back_repairs_a_sentence_no_block_move_nor_pair_can():
    got, off = _fill_toy(0, {3: {3}}).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == WRONG and off["changes"] == 0 and "fill" not in off
    got, on = _fill_toy(8, {3: {3}}).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["misfit_after"] == 0 and on["fill"] == 8 and on["fills_kept"] == 1
    assert on["blocks_kept"] == 0 and on["pairs_kept"] == 0 and on["changes"] == 1
    got, bare = _fill_toy(8, {}).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)  # nothing placed
    assert got == WRONG and bare["fills_kept"] == 0


def test_option_repair_pin_fill_reaches_the_repair_off_by_default_checked_before_any_work(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    _, made = _race(monkeypatch)
    _guess(monkeypatch, "stall", repair_pin_fill=8)
    assert made[0].fill == 8
    _guess(monkeypatch, "stall")
    assert made[-1].fill == 0 and UpdateExact().repair_pin_fill == 0
    assert attack_instance("exact-update", {"repair_pin_fill": 16}, 0).repair_pin_fill == 16
    for bad in ("x", -1):
        with pytest.raises(InputError, match="repair_pin_fill"):
            attack_instance("exact-update", {"repair_pin_fill": bad}, 0)


def test_no_fills_where_the_orphans_are_many(monkeypatch):
    """The gate (RT b4 lr 1e-4 dev 0 at 600 CPU s: 22+ orphans at the first block sweep, 59k fills screened took the
    budget): more than `MOST_ORPHANS` orphans, no fill is tried."""
    from textleak.attacks import update_repair_fill as fill_mod

    many = {3: {3}, **{t: {1} for t in range(40, 40 + fill_mod.MOST_ORPHANS)}}  # 3 at 3 and 8 more orphans at 1
    assert len(orphans(WRONG, many)) == fill_mod.MOST_ORPHANS + 1
    got, on = _fill_toy(8, many).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == WRONG and on["fills_kept"] == 0 and on["fills_screened"] == 0
    monkeypatch.setattr(fill_mod, "MOST_ORPHANS", fill_mod.MOST_ORPHANS + 1)
    got, on = _fill_toy(8, many).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["fills_kept"] == 1
