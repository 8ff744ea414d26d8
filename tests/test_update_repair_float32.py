"""The token repair in float32 (`update_repair.BoxRepair.dtype`, `exact-update`'s option `repair_float32`, off): the
trials' gradients, the batch's mean and the box misfit kept in float32 rather than float64. The misfit agrees with the
float64 one to float32 rounding, the repair reaches the same batch, and the batched trial gradients
(`update_repair_batch`) come in the same dtype. A wide random BERT's update at lr 1e-5."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import embedding_pins, repair_inputs
import test_update_repair_batch as batch_tests
from test_update_repair_inplace import _wrong
from textleak.attacks import update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair

setup, LABELS = batch_tests.setup, batch_tests.LABELS  # the fixture: the wide BERT's update on three sentences


def _box(wide, observation, ids, **kw):
    layout, fits, span0 = repair_inputs(wide, observation)
    extra = wide.tokenizer.convert_tokens_to_ids([",", "big", "dog", "red"])
    vocab = torch.tensor(sorted({t for s in ids for t in s} | set(extra)))
    return BoxRepair(layout, fits, span0, vocab, sweeps=2, pins=embedding_pins(ids, extra), **kw)


@pytest.mark.parametrize("inplace", [False, True])
def test_the_float32_misfit_is_the_float64_one_to_float32_rounding(setup, inplace):
    wide, observation, ids = setup
    wide64, wide32 = _box(wide, observation, ids, inplace=inplace), _box(wide, observation, ids, inplace=inplace,
                                                                         float32=True)
    assert wide64.dtype == wide64.U.dtype == torch.float64 and wide32.dtype == wide32.U.dtype == torch.float32
    assert torch.equal(wide32.U, wide64.U.float()) and torch.equal(wide32.half, wide64.half.float())
    for box in (wide64, wide32):
        box.begin(_wrong(ids), LABELS, time.monotonic() + 600)
    assert wide32._total.dtype == torch.float32 and wide32._buffers()[0].dtype == torch.float32
    assert wide32._best == pytest.approx(wide64._best, rel=1e-4) and wide64._best > 0
    g64, g32 = wide64.gradient(ids[2], LABELS[2]), wide32.gradient(ids[2], LABELS[2])
    assert g32.dtype == torch.float32 and torch.equal(g32, g64.float())  # the model's float32 gradient, not rounded
    got = wide32.misfit(wide32._shifted([(g32, wide32._own[2])]))
    want = wide64.misfit(wide64._shifted([(g64, wide64._own[2])]))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-12) and want < wide64._best  # the true third slot: lower


def test_the_float32_repair_makes_the_float64_repairs_changes(setup):
    wide, observation, ids = setup
    got, off = _box(wide, observation, ids).run(_wrong(ids), LABELS, time.monotonic() + 600)
    same, on = _box(wide, observation, ids, float32=True).run(_wrong(ids), LABELS, time.monotonic() + 600)
    assert got == same == ids and on["float32"] is True and "float32" not in off
    for key in ("changes", "trials", "sweeps", "exchange_trials"):
        assert on[key] == off[key], key
    assert on["misfit_before"] == pytest.approx(off["misfit_before"], rel=1e-4)


def test_batched_trial_gradients_come_in_the_repairs_dtype(setup):
    wide, observation, ids = setup
    box = _box(wide, observation, ids, float32=True)
    box.batch = 2
    box.begin(ids, LABELS, time.monotonic() + 600)
    trials = [ids[0], ids[0][:2] + ids[0][3:4] + ids[0][2:3] + ids[0][4:]]
    from textleak.attacks.update_repair_batch import weighed
    got = list(weighed(box, trials, LABELS[0]))
    assert len(got) == 2 and all(g.dtype == torch.float32 for _, g in got)
    assert torch.allclose(got[0][1], box.gradient(ids[0], LABELS[0]), rtol=1e-4, atol=1e-7)


def test_option_repair_float32_reaches_the_repair_off_by_default_checked(setup):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    wide, observation, ids = setup
    layout, fits, span0 = repair_inputs(wide, observation)
    vocab = torch.tensor(sorted({t for s in ids for t in s}))
    for value, want in ((None, torch.float64), (True, torch.float32), (False, torch.float64)):
        attack = UpdateExact() if value is None else UpdateExact(repair_float32=value)
        attack._fits = fits
        assert update_small_lr._box_repair(attack, layout, span0, vocab, embedding_pins(ids)).dtype == want
    assert attack_instance("exact-update", {"repair_float32": True}, 0).repair_float32 is True
    with pytest.raises(InputError, match="repair_float32"):
        attack_instance("exact-update", {"repair_float32": 3}, 0)
