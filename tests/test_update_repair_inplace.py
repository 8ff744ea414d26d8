"""The token repair's scratch buffers (`update_repair.BoxRepair.inplace`, `exact-update`'s option `repair_inplace`):
each trial's mean gradient and box misfit computed in place, the same values to the bit as the plain expressions, so
the repair makes the same changes (it only spends less time and memory on each trial). A wide random BERT's update
at lr 1e-5."""

from __future__ import annotations

import time

import torch

import test_update_repair_screen as screen
from test_update_repair_screen import LABELS, _box, _repair_the_true_batch, _spy_on_the_repair
from textleak.attacks.update import UpdateExact

setup = screen.setup  # the fixture: the wide BERT's update on the screen tests' three sentences


def _boxes(wide, observation, ids):
    """The token repair plain and with scratch buffers (`_box`: 2 sweeps, the true tokens placed and ranked)."""
    return _box(wide, observation, ids)[0], _box(wide, observation, ids, inplace=True)[0]


def _wrong(ids):
    """Two tokens off: "the cat was good ." in the third slot and "a bird sang the song ." in the first."""
    wrong = [list(s) for s in ids]
    wrong[2][2], wrong[0][4] = ids[1][2], ids[1][1]
    return wrong


def test_the_scratch_misfit_and_mean_are_the_plain_ones_to_the_bit(setup):
    wide, observation, ids = setup
    plain, inplace = _boxes(wide, observation, ids)
    for box in (plain, inplace):
        box.begin(_wrong(ids), LABELS, time.monotonic() + 600)
    grads = [plain.gradient(s, y) for s, y in zip(ids, LABELS)]
    for changes in ([(grads[0], plain._own[0])], [(grads[1], plain._own[1]), (grads[2], plain._own[2])]):
        want = plain._shifted(changes)
        got = inplace._shifted(changes)
        assert torch.equal(got, want) and got.data_ptr() == inplace._buffers()[0].data_ptr()
        assert inplace.misfit(got) == plain.misfit(want) > 0
    scale = float(plain.half.abs().max())
    for seed in range(3):  # far outside the box and near it
        G = plain.U + torch.randn(len(plain.U), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) \
            * scale * (1.5 - seed / 2)
        assert inplace.misfit(G) == plain.misfit(G)
    assert inplace._buffers()[0] is inplace._buffers()[0]  # made once


def test_the_repair_in_scratch_buffers_makes_the_plain_repairs_changes(setup):
    wide, observation, ids = setup
    plain, inplace = _boxes(wide, observation, ids)
    got, off = plain.run(_wrong(ids), LABELS, time.monotonic() + 600)
    same, on = inplace.run(_wrong(ids), LABELS, time.monotonic() + 600)
    assert got == same and on["inplace"] is True and "inplace" not in off
    for key in ("misfit_before", "misfit_after", "changes", "trials", "sweeps", "exchange_trials"):
        assert on[key] == off[key], key
    assert off["changes"] >= 1 and off["exchange_trials"] > 0


def test_option_repair_inplace_reaches_the_token_repair(setup, monkeypatch):
    wide, observation, ids = setup
    assert UpdateExact().repair_inplace is True  # the default since session 35
    seen = _spy_on_the_repair(monkeypatch, "inplace")
    for on in (False, True):
        _repair_the_true_batch(UpdateExact(repair_inplace=on, cls_descent=False), wide, observation, ids)
    assert seen == [(False,), (True,)]


TRADE_TRUTH = [[101, 5, 6, 102], [101, 7, 8, 102], [101, 9, 10, 102]]
TRADE_WRONG = [[101, 5, 8, 102], [101, 7, 6, 102], [101, 9, 10, 102]]  # slots 0 and 1 traded position 2


def _trade_box(inplace: bool, guard=None) -> object:
    """`test_update_repair_slide.toy_box` (box 0) with a gradient one-hot in the sentence's identity (as the pairs
    tests'), on a batch whose slots 0 and 1 hold each other's token at position 2: one trade (`_exchange`) makes it
    true. `guard` as `BoxRepair.guard`."""
    from test_update_repair_pairs import identity_gradient
    from test_update_repair_slide import toy_box

    box = toy_box(TRADE_TRUTH, TRADE_WRONG, inplace=inplace, _scratch=None, guard=guard)
    identity_gradient(box, TRADE_TRUTH)
    seqs, _ = box.begin(TRADE_WRONG, [0, 0, 0], time.monotonic() + 600)
    return box, seqs


def test_a_kept_change_of_two_sentences_keeps_a_fresh_mean_not_the_scratch_buffer():
    """`_keep_change` (session 44: the keeping that `_exchange`, `_move` and `refill` each wrote out) keeps the misfit,
    both sentences and their gradients, counts one change, and makes the batch's mean afresh: with `inplace` the mean
    the trial was weighed on is scratch buffer 0, which the next trial overwrites."""
    box, seqs = _trade_box(inplace=True)
    plain, _ = _trade_box(inplace=False)
    x, y = TRADE_TRUTH[0], TRADE_TRUTH[1]
    gx, gy = box.gradient(x, 0), box.gradient(y, 0)
    weighed = box._shifted([(gx, box._own[0]), (gy, box._own[1])])
    assert weighed.data_ptr() == box._buffers()[0].data_ptr()
    want = plain._shifted([(gx, plain._own[0]), (gy, plain._own[1])])  # the plain expression: a new tensor
    value, own2 = box.misfit(weighed), box._own[2]
    box._keep_change(seqs, value, {0: (x, gx), 1: (y, gy)})
    assert seqs == TRADE_TRUTH and box._best == value == 0 and box._changes == 1
    assert box._own[0] is gx and box._own[1] is gy and box._own[2] is own2
    assert torch.equal(box._total, want) and all(box._total.data_ptr() != b.data_ptr() for b in box._buffers())
    box.misfit(box._shifted([(box.gradient(TRADE_WRONG[2], 0), own2)]))  # the next trial, in the scratch buffers
    assert torch.equal(box._total, want)


def test_a_trade_the_guard_refuses_changes_nothing_and_one_it_passes_is_kept():
    """`_exchange` through `_keep_change`: the trade that makes the batch true is kept (the fresh mean the plain
    expression's, to the bit); where the [CLS] guard refuses every trade (each changed sentence would score 1 over
    its 0) the sentences, the mean, the gradients, the misfit and the count of changes stay as they were."""
    box, seqs = _trade_box(inplace=True)
    plain, _ = _trade_box(inplace=False)
    box._exchange(seqs)  # the first trade of least misfit: the heads up to position 1, slots 0 and 1 swapped whole
    assert seqs == [TRADE_TRUTH[1], TRADE_TRUTH[0], TRADE_TRUTH[2]] and box._best == 0 and box._changes == 1
    want = plain._shifted([(plain.gradient(seqs[0], 0), plain._own[0]), (plain.gradient(seqs[1], 0), plain._own[1])])
    assert torch.equal(box._total, want) and all(box._total.data_ptr() != b.data_ptr() for b in box._buffers())
    refusing, seqs = _trade_box(inplace=True, guard=lambda trials: [1.0] * len(trials))
    refusing._cls = [0.0, 0.0, 0.0]
    total, own, best = refusing._total, list(refusing._own), refusing._best
    refusing._exchange(seqs)
    assert seqs == TRADE_WRONG and refusing._changes == 0 and refusing.guarded >= 1 and refusing._best == best > 0
    assert refusing._total is total and all(a is b for a, b in zip(refusing._own, own))
