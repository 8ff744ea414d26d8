"""`beyond_rank --option sweep_kick=K` (#16, session 47): a sweep of the target descent that brings its pair less than
`beyond_rank_kick.SLOW` nearer cuts its track by K tokens and passes it once, kept where nearer (SST-2 dev 0 of 64 at
1200 CPU s: the late sweeps creep ~1% a sweep on tracks too long for their sentences); on the tiny 2-layer BERT
classifier of test_pooled_states, with the distance replaced where the test needs one it controls."""

from __future__ import annotations

import random

import pytest
import torch

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks import beyond_rank_kick as kick_module
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
LONG = [101, 5, 6, 7, 8, 9, 10, 102]  # a track two tokens too long for its "sentence" [101, 5, 6, 7, 8, 102]


def _distance(seq):
    """A distance that a single change barely moves (a track one token off in content creeps) but the right length
    brings near: 0.5 a token of length off, less 1e-4 a token of 5..8 in place."""
    return 0.5 * abs(len(seq) - 6) / 6 + 0.01 - 1e-4 * sum(t == s for t, s in zip(seq[1:-1], [5, 6, 7, 8]))


def _fake_nearest(self, trial, target, top=1):
    d = [_distance(t) for t in trial]
    order = sorted(range(len(trial)), key=lambda k: d[k])[:top]
    return order, [d[k] for k in order]


def _descent(batch, monkeypatch, **kw):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    monkeypatch.setattr(TargetDescent, "_nearest", _fake_nearest)
    descent = TargetDescent(layout, grads, len(truth), specials, **kw)
    descent.rng = random.Random(0)
    return descent


def test_a_slow_sweep_cuts_its_long_track_only_with_kick(batch, monkeypatch):
    options = [[]] + [[5, 6, 7, 8, 9, 10, 11]] * 7 + [[]]
    target = torch.zeros(4)
    start = _distance(LONG)
    seq, d = _descent(batch, monkeypatch)._sweep(list(LONG), target, options, start)
    assert len(seq) == len(LONG) and d > start * (1 - kick_module.SLOW)  # the old sweep: a slow creep, no cut
    descent = _descent(batch, monkeypatch, kick=2)
    seq, d = descent._sweep(list(LONG), target, options, start)
    assert seq == [101, 5, 6, 7, 8, 102] and d < 0.01  # cut by two, the pass put the rest in place
    assert descent.kicks["tried"] == 1 and descent.kicks["kept"] == 1
    again, _ = descent._sweep(list(LONG), target, options, start)  # a track is kicked once
    assert len(again) == len(LONG) and descent.kicks["tried"] == 1


def test_a_kick_that_ends_farther_is_dropped(batch, monkeypatch):
    options = [[]] + [[5, 6, 7, 8, 9, 10, 11]] * 7 + [[]]
    descent = _descent(batch, monkeypatch, kick=2)
    short = [101, 5, 6, 7, 102]  # one too short: cut by two it ends farther
    seq, d = descent._sweep(list(short), torch.zeros(4), options, _distance(short))
    assert len(seq) >= len(short) and descent.kicks.get("kept", 0) == 0


def test_kick_runs_in_the_descent_and_is_off_by_default(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    descent = TargetDescent(layout, grads, len(truth), specials, kick=1)
    descent.run([list(t) for t in tracks], [], pins.allowed)
    assert "kicks" in descent.report
    plain = TargetDescent(layout, grads, len(truth), specials)
    plain.run([list(t) for t in tracks], [], pins.allowed)
    assert "kicks" not in plain.report


def test_sweep_kick_option_reaches_the_descent_and_is_checked(batch):
    assert ATTACKS.get("beyond_rank")().sweep_kick == 0 and _wide_finisher(batch).sweep_kick == 0
    assert _wide_finisher(batch, sweep_kick=2).sweep_kick == 2
    assert attack_instance("beyond_rank", {"sweep_kick": 2}, 0).sweep_kick == 2
    assert ATTACKS.get("beyond_rank")(sweep_kick=3).options()["sweep_kick"] == 3
    for bad in (-1, 1.5):
        with pytest.raises(InputError, match="sweep_kick"):
            attack_instance("beyond_rank", {"sweep_kick": bad}, 0)
