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
