"""The target descent's screen pass (`beyond_rank_rough.RoughStates`, #16, session 44): one autocast region over the
sweeps (each weight cast once; the same states and decisions as a fresh autocast region per candidate set, as before)
and `beyond_rank --option sweep_screen_copy=true` (the screen on a bfloat16 copy of the model); on the tiny 2-layer
BERT classifier of test_pooled_states."""

from __future__ import annotations

import pytest
import torch

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.validate import attack_instance

SWEEP = TargetDescent._sweep  # the unpatched sweep
FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name


def _trials(seq):
    return [seq[:p] + [t] + seq[p + 1:] for p in range(1, len(seq) - 1) for t in (seq[p], seq[-1] - 1, seq[1])]


def _reference_rough(descent, trial, target):
    """The screen's distances as `_nearest` read them before session 44: a fresh autocast region per call."""
    with torch.autocast(torch.device(descent.layout.device).type, dtype=torch.bfloat16):
        return (descent.states(trial) - target).norm(dim=1)


def test_the_sweeps_run_in_one_autocast_region_with_the_float32_rescoring_outside_it(batch, monkeypatch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    seen = []

    def sweep(self, seq, target, options, best):
        seen.append(torch.is_autocast_enabled("cpu"))
        return SWEEP(self, seq, target, options, best)
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=2)
    assert descent.run([list(t) for t in tracks], [], pins.allowed) == truth
    assert seen and all(seen)  # every sweep inside the region (main: autocast on only within each screen pass)
    assert not torch.is_autocast_enabled("cpu")  # and off again after it
    with descent.rough.region(True):
        with descent.rough.exact():
            assert not torch.is_autocast_enabled("cpu")
    seen.clear()
    plain = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=0)  # no screen: no region
    assert plain.run([list(t) for t in tracks], [], pins.allowed) == truth and seen and not any(seen)


def test_the_region_reads_the_same_states_and_decisions_as_a_fresh_region_per_call(batch):
    """A pure speed-up: inside the region the screen's states are bit for bit those of a fresh autocast region, the
    float32 rescoring's those with no autocast, so `_nearest` decides the same (can fail only where the region leaked
    autocast into the float32 pass, or the cache cast differently)."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=2)
    descent.run([list(t) for t in tracks], [], pins.allowed)
    outside = []
    for seq, target in zip(truth, descent.paired):
        trial = _trials(seq)
        nearest = descent._nearest(trial, target, 2)
        outside.append((_reference_rough(descent, trial, target), descent.states(trial), nearest))
    with descent.rough.region(True):
        for (rough, exact, nearest), seq, target in zip(outside, truth, descent.paired):
            trial = _trials(seq)
            assert torch.equal((descent.rough.states(trial) - target).norm(dim=1), rough)
            assert torch.equal((descent.rough.states(trial) - target).norm(dim=1), rough)  # the cached casts again
            with descent.rough.exact():
                assert torch.equal(descent.states(trial), exact)
            assert descent._nearest(trial, target, 2) == nearest
    assert not torch.equal(rough, (exact - target).norm(dim=1))  # the screen is at bfloat16 indeed


def test_sweep_screen_copy_screens_on_a_bfloat16_copy_and_keeps_the_float32_decisions(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=8, screen=2, screen_copy=True)
    assert descent.run([list(t) for t in tracks], [], pins.allowed) == truth
    assert descent.report["reached"] == len(truth) and descent.scored["rough"] > descent.scored["exact"] > 0
    half = descent.rough._half
    assert half is not None and half is not layout.model
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in half.parameters())
    assert {p.dtype for p in layout.model.parameters()} == {torch.float32}  # the model itself untouched
    seq, target = truth[0], descent.paired[0]
    trial = _trials(seq)
    rough, ref = (descent.rough.states(trial) - target).norm(dim=1), _reference_rough(descent, trial, target)
    assert not torch.equal(rough, ref) and float(((rough - ref) / ref).abs().max()) < 0.05  # near autocast's
    k, d = descent._nearest(trial, target, 2)
    exact = (descent.states(trial) - target).norm(dim=1) / target.norm()
    assert d == [float(exact[i]) for i in k]  # the distances kept are the float32 ones


def test_sweep_screen_copy_reaches_the_descent_and_is_checked(batch):
    assert _wide_finisher(batch).sweep_screen_copy is True  # on by default since session 44
    assert ATTACKS.get("beyond_rank")().sweep_screen_copy is True
    assert _wide_finisher(batch, sweep_screen_copy=False).sweep_screen_copy is False
    assert ATTACKS.get("beyond_rank")(sweep_screen_copy=True).options()["sweep_screen_copy"] is True
    assert attack_instance("beyond_rank", {"sweep_screen_copy": True}, 0).sweep_screen_copy is True
    with pytest.raises(InputError, match="sweep_screen_copy"):
        attack_instance("beyond_rank", {"sweep_screen_copy": 3}, 0)
