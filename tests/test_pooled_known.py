"""`beyond_rank --option pooled_known=true` (#16, session 48): the found sentences' own [CLS] states given to the
pooled states' solver before its starts (`leaks.pooled.pooled_states`' `known`), each taken where it fits the pooler's
gradient, so the first round's starts are solved in what they leave; on by default since session 48 (off: the solver
as before). On the tiny 2-layer BERT classifier of test_pooled_states (6 sentences)."""

from __future__ import annotations

import random

import pytest
import torch

from test_pooled_states import _random_starts, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.text.leaks import pooled
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name


def _counted(starts, asked):
    def draw(n):
        asked.append(n)
        return starts(n)
    return draw


def test_known_states_are_taken_and_the_first_round_solves_the_rest(batch):
    _, layout, grads, truth, states = batch
    asked = []
    got = pooled.pooled_states(layout, grads, len(truth), _counted(_random_starts(layout, truth, random.Random(0)),
                                                                    asked), first=64, later=32, known=states[:4])
    assert got.complete and asked[0] == 64  # the first round still draws `first` starts, not `later`
    assert torch.equal(got.states[:4], states[:4])  # the known ones, as given, in front
    rel = torch.cdist(got.states, states) / states.norm(dim=1)[None]
    near, which = rel.min(1)
    assert float(near.max()) < 1e-3 and sorted(which.tolist()) == list(range(len(truth)))


def test_a_known_state_off_the_gradient_is_not_taken(batch):
    _, layout, grads, truth, states = batch
    off = states[:1] + 0.3 * torch.randn(1, states.shape[1], dtype=states.dtype,
                                         generator=torch.Generator().manual_seed(0))
    asked = []
    got = pooled.pooled_states(layout, grads, len(truth), _counted(_random_starts(layout, truth, random.Random(0)),
                                                                    asked), first=64, later=32, rounds=1, known=off)
    assert float((got.states - off).norm(dim=1).min()) > 1e-3 * float(off.norm())
    assert asked == [64]


def test_pooled_known_is_on_by_default_checked_and_gives_the_found_states(batch, monkeypatch):
    import textleak.attacks.beyond_rank_targets as tg
    _, layout, grads, truth, states = batch
    assert ATTACKS.get("beyond_rank")().pooled_known is True and _wide_finisher(batch).pooled_known is True
    assert _wide_finisher(batch, pooled_known=False).pooled_known is False
    assert ATTACKS.get("beyond_rank")(pooled_known=True).options()["pooled_known"] is True
    assert attack_instance("beyond_rank", {"pooled_known": True}, 0).pooled_known is True
    with pytest.raises(InputError, match="pooled_known"):
        attack_instance("beyond_rank", {"pooled_known": 3}, 0)
    asked = []
    monkeypatch.setattr(tg, "pooled_states", lambda *a, **k: asked.append(k["known"]))
    for on in (False, True):
        finish = _wide_finisher(batch, pooled_known=on)
        TargetDescent(layout, grads, len(truth), set(), known=finish.pooled_known).run(
            [list(s) for s in truth[2:]], [list(s) for s in truth[:2]], [set()] * max(map(len, truth)))
    assert asked[0] is None
    assert float((asked[1] - states[:2]).norm() / states[:2].norm()) < 1e-5  # the found sentences' own states
