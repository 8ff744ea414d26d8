"""The token repair's neighbouring pairs of substitutions (`update_repair_pairs`, `BoxRepair.pairs`, `exact-update`'s
option `repair_pairs`, 16 by default since session 43): at a block sweep a short sentence whose block moves lowered
nothing tries the tokens at two neighbouring positions replaced at once. A sentence two tokens off, where each
one-token change alone leaves the misfit as it was, is repaired by one pair (SST-2 dev batch 0 of 4 at K 8, lr 1e-5:
"ever are the" for "- - ever"; session 42)."""

from __future__ import annotations

import time

import pytest
import torch

from test_update_repair_blocks import _guess, _race
from test_update_repair_slide import _toy as slide_toy
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair_pairs import neighbour_pairs

TRUTH = [[101, 1, 2, 3, 4, 102], [101, 11, 12, 13, 102]]
WRONG = [[101, 1, 8, 9, 4, 102], [101, 11, 12, 13, 102]]  # "2 3" -> "8 9"


def test_neighbour_pairs_replace_two_neighbouring_tokens_from_their_options():
    seq = [101, 1, 2, 3, 102]
    options = [[101], [1, 5, 6], [2, 7], [3, 8], [102]]
    got = neighbour_pairs(seq, options)
    assert got == [[101, 5, 7, 3, 102], [101, 6, 7, 3, 102], [101, 1, 7, 8, 102]]  # both tokens changed, ends kept
    assert neighbour_pairs([101, 1, 102], [[101], [1, 2], [102]]) == []  # one inner token: no pair
    assert neighbour_pairs(seq, [[101], [5, 5], [7], [3], [102]]) == [[101, 5, 7, 3, 102]]  # distinct


def identity_gradient(box, truth) -> None:
    """Give `box` a gradient one-hot in the sentence's identity (each new sentence its own entry; counted in
    `box.trials`), U the mean of `truth`'s, and a box of width 0: only the true batch fits."""
    seen: dict = {}

    def gradient(seq, label):
        box.trials += 1
        g = torch.zeros(64, dtype=torch.double)
        g[seen.setdefault(tuple(seq), len(seen))] = 1.0
        return g
    box.gradient = gradient
    box.U = sum(gradient(s, 0) for s in truth) / len(truth)
    box.half = torch.zeros_like(box.U)


def _toy(pairs: int, truth=TRUTH, wrong=WRONG) -> object:
    """The slide tests' descent (box 0, no slides, no exchange) on a gradient that knows only whole sentences (one-hot
    in the sentence's identity), so every sentence but the true one is as far from U: no single substitution lowers
    the misfit, the pair that makes sentence 0 true does. Each position offers its wrong and its true token; the screen
    counts the positions off the truth. Block moves (3) at a stall, `pairs` as given."""
    box = slide_toy(0)
    box.block, box.blocks_kept, box.block_screened, box.block_at = 3, 0, 0, "stall"
    box.pairs, box.pairs_kept, box.pairs_screened, box.sweeps, box.keep = pairs, 0, 0, 4, 0
    identity_gradient(box, truth)
    by_length = {len(t): (w, t) for w, t in zip(wrong, truth)}
    box.options = lambda n: [sorted({a, b}) for a, b in zip(*by_length[n])]
    right = {len(s): s for s in truth}
    box.screen = lambda trials: [float(sum(a != b for a, b in zip(t, right[len(t)]))) for t in trials]
    return box


def test_a_pair_repairs_two_neighbouring_tokens_where_no_single_move_can():
    got, off = _toy(0).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == WRONG and off["changes"] == 0 and "pairs" not in off
    got, on = _toy(8).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == TRUTH and on["misfit_after"] == 0 and on["pairs"] == 8 and on["pairs_kept"] == 1
    assert on["blocks_kept"] == 0 and on["changes"] == 1
    got, short = _toy(5).run(WRONG, [0, 0], time.monotonic() + 600, exchange=False)  # 6 tokens: over the cap
    assert got == WRONG and short["pairs_kept"] == 0 and short["pairs_screened"] == 0


def test_option_repair_pairs_reaches_the_repair_16_by_default_checked_before_any_work(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    _, made = _race(monkeypatch)
    _guess(monkeypatch, "stall", repair_pairs=24)
    assert made[0].pairs == 24
    _guess(monkeypatch, "stall")
    assert made[-1].pairs == 16 and UpdateExact().repair_pairs == 16
    _guess(monkeypatch, "stall", repair_pairs=0)
    assert made[-1].pairs == 0
    assert attack_instance("exact-update", {"repair_pairs": 24}, 0).repair_pairs == 24
    for bad in ("x", -1):
        with pytest.raises(InputError, match="repair_pairs"):
            attack_instance("exact-update", {"repair_pairs": bad}, 0)


#: sentence 0's "50 9" should be "2 3", and 50 belongs in sentence 1 (for 12), where the repair's options never offer it
REFILL_TRUTH = [[101, 1, 2, 3, 4, 102], [101, 11, 50, 13, 102]]
REFILL_WRONG = [[101, 1, 50, 9, 4, 102], [101, 11, 12, 13, 102]]


def _refill_toy(allowed=None) -> object:
    """`_toy` on REFILL_*: sentence 0's positions offer their wrong and true tokens, sentence 1's only its wrong ones;
    `cover` {50}; `allowed`: the pins' tokens allowed per position (none: no pins)."""
    box = _toy(8, REFILL_TRUTH, REFILL_WRONG)
    box.options = lambda n: ([sorted({w, t}) for w, t in zip(REFILL_WRONG[0], REFILL_TRUTH[0])] if n == 6
                             else [[t] for t in REFILL_WRONG[1]])
    box.cover, box.pairs_refilled = {50}, 0
    box.pins = None if allowed is None else type("Pins", (), {"allowed": allowed})()
    return box


def test_a_pair_that_takes_a_cover_token_out_puts_it_back_into_another_sentence():
    """The pair "50 9" -> "2 3" takes 50, a token of `cover` (an update's moved row), out of the batch, so `keep_best`
    refuses it; 50's true place is in sentence 1, where no option offers it. The pair is kept with 50 put back there
    (`refill`: three tokens over two sentences), and the batch is true; where the pins forbid 50 there, nothing."""
    got, report = _refill_toy().run(REFILL_WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == REFILL_TRUTH and report["misfit_after"] == 0
    assert report["pairs_kept"] == 1 and report["pairs_refilled"] == 1 and report["changes"] == 1
    box = _refill_toy([set(), {11}, {12}, {13}, set()])  # 50 allowed nowhere in sentence 1
    got, report = box.run(REFILL_WRONG, [0, 0], time.monotonic() + 600, exchange=False)
    assert got == REFILL_WRONG and report["pairs_kept"] == 0 and report["pairs_refilled"] == 0
