"""The token repair's slides (`update_repair_moves.slides`, `BoxRepair.slide`, `exact-update`'s option
`repair_slide`): a token moved up to `slide` places within its sentence, the tokens between shifted one place. A
sentence whose token stands a few places off is repaired by one slide, where each substitution or swap alone is worse
(the order errors of RT dev batch 0 of 4 at K 8, lr 1e-5; session 36)."""

from __future__ import annotations

import time

import pytest
import torch

import test_update_repair_screen as screen
from test_update_repair_screen import _repair_the_true_batch, _spy_on_the_repair
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_moves import slides

setup = screen.setup  # the fixture: the wide BERT's update on the screen tests' three sentences

TRUTH = [[101, 5, 6, 7, 8, 9, 102], [101, 11, 12, 13, 102]]


def test_slides_move_one_token_up_to_width_places_and_keep_the_ends():
    seq = [101, 1, 2, 3, 4, 102]
    got = slides(seq, 2)
    assert [101, 2, 1, 3, 4, 102] in got and [101, 3, 1, 2, 4, 102] in got and [101, 2, 3, 1, 4, 102] in got
    assert [101, 4, 1, 2, 3, 102] not in got  # three places: beyond the width
    assert all(s[0] == 101 and s[-1] == 102 and sorted(s) == sorted(seq) for s in got)
    assert seq not in got and len({tuple(s) for s in got}) == len(got)
    assert len(slides(seq, 3)) > len(got) and slides([101, 7, 102], 5) == []
    assert slides([101, 1, 1, 102], 5) == []  # moving a token among copies of itself changes nothing


def toy_box(truth: list[list[int]], wrong: list[list[int]], **attrs) -> BoxRepair:
    """The descent alone, on a toy gradient: a sentence's is one-hot in (position, token), U the mean of `truth`'s,
    the box 0; each position offers only the token standing there in `wrong` (no substitution can help). `attrs` set
    the repair's options (`slide`; the kick tests' `screen`, `keep`, `kick`)."""
    box = BoxRepair.__new__(BoxRepair)
    box.cover, box.trials, box.guard, box.guard_first, box.inplace, box.pins = None, 0, None, False, False, None
    box.screen, box.keep, box.first_keep, box.screened, box._screening = None, 0, 0, 0, False
    box.move, box.moves, box.sweeps, box.slide, box.width = False, 0, 1, 0, 1
    box.exchange_trials, box.exchange_screened, box.guarded = 0, 0, 0

    def gradient(seq, label):
        box.trials += 1
        g = torch.zeros(8 * 128, dtype=torch.double)
        for p, t in enumerate(seq):
            g[p * 128 + t] = 1.0
        return g
    box.gradient = gradient
    box.U = sum(gradient(s, 0) for s in truth) / len(truth)
    box.half = torch.zeros_like(box.U)
    box.options = lambda n: [[t] for t in next(s for s in wrong if len(s) == n)]
    for name, value in attrs.items():
        setattr(box, name, value)
    return box


def _toy(slide: int) -> BoxRepair:
    """`toy_box` on the slide tests' wrong batch, slides of up to `slide` places."""
    return toy_box(TRUTH, _wrong(), slide=slide)


def _wrong():
    """The truth with 9 slid 3 places back in sentence 0 ("5 9 6 7 8") and 11, 12 swapped in sentence 1."""
    return [[101, 5, 9, 6, 7, 8, 102], [101, 12, 11, 13, 102]]


def test_a_slide_repairs_a_token_three_places_off_where_substitutions_cannot():
    got, off = _toy(0).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == _wrong() and off["changes"] == 0 and "slide" not in off
    got, on = _toy(5).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["misfit_after"] == 0 and on["changes"] == 2 and on["slide"] == 5
    got, _ = _toy(2).run(_wrong(), [0, 0], time.monotonic() + 600, exchange=False)
    assert got[0] == [101, 5, 6, 7, 9, 8, 102] and got[1] == TRUTH[1]  # a width of 2: 9 two places on, one short


@pytest.mark.parametrize("option, field", [("repair_slide", "slide"), ("repair_block", "block")])
def test_options_repair_slide_and_block_reach_the_token_repair(setup, monkeypatch, option, field):
    """`repair_slide` and `repair_block` (`test_update_repair_blocks`) handed to `BoxRepair`; slides off by default,
    block moves of up to 4 tokens on (since session 39)."""
    wide, observation, ids = setup
    assert getattr(UpdateExact(), option) == (4 if option == "repair_block" else 0)
    seen = _spy_on_the_repair(monkeypatch, field)
    for value in (0, 4):
        _repair_the_true_batch(UpdateExact(**{option: value}, cls_descent=False), wide, observation, ids)
    assert seen == [(0,), (4,)]


@pytest.mark.parametrize("option", ["repair_slide", "repair_block", "search_screen"])
def test_repair_move_sizes_must_be_counts_of_zero_or_more(option):
    """`--option repair_block=-1` is refused before any work (a negative size would read as off); `search_screen`
    (`Exact`'s, inherited) is checked here as in `exact`."""
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    assert getattr(attack_instance("exact-update", {option: 4}, 0), option) == 4
    for bad in (-1, 2.5, "x"):
        with pytest.raises(InputError, match=option):
            attack_instance("exact-update", {option: bad}, 0)
