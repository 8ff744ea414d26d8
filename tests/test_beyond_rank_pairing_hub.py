"""`beyond_rank --option pairing_hub=K` (#16, session 43): the target descent pairs its tracks with the pooled states
(Hungarian) on each track's distance less its mean distance to its K nearest states, so that a track standing near
every state (a hub) does not take a state from a track that stands near that one only; 0 (the default): on the
distance alone. RT batch 0 of 64 (recipes/measured/large_batch_s43/): 63 tracks for 34 states, the distance reads no
content (per-state Spearman 0.07 to the tracks' unigram F1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_pooled_states import _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
#: 3 tracks, 2 states: track 0 near both (a hub), track 1 near state 0 only, track 2 near state 1 only
DIST = torch.tensor([[0.40, 0.41], [0.45, 0.90], [0.90, 0.45]], dtype=torch.float64)


def _pairs(hub: int) -> list[tuple[int, int]]:
    descent = TargetDescent(SimpleNamespace(device="cpu"), {}, 2, set(), hub=hub)
    return sorted(descent._paired(DIST, [[101, 5, 102]] * 3, torch.zeros(2, 4), []))


def test_off_the_hub_takes_a_state():
    assert _pairs(0) == [(0, 0), (2, 1)]  # least summed distance: 0.40 + 0.45


def test_pairing_hub_pairs_each_state_with_the_track_near_it_alone():
    assert _pairs(2) == [(1, 0), (2, 1)]  # less each track's mean: track 0 -0.005 / +0.005, tracks 1, 2 -0.225


def test_with_as_many_tracks_as_states_the_pairs_are_the_same():
    square = DIST[1:]
    descent = TargetDescent(SimpleNamespace(device="cpu"), {}, 2, set(), hub=1)
    assert descent._paired(square, [[101, 5, 102]] * 2, torch.zeros(2, 4), []) == [(0, 0), (1, 1)]
    assert descent._paired(torch.tensor([[0.5, 0.2], [0.3, 0.9]], dtype=torch.float64), [[1]] * 2,
                           torch.zeros(2, 4), []) == [(0, 1), (1, 0)]


def test_pairing_hub_reaches_the_descent_and_is_checked(batch):
    assert _wide_finisher(batch).pairing_hub == 0  # off by default
    assert _wide_finisher(batch, pairing_hub=3).pairing_hub == 3
    assert ATTACKS.get("beyond_rank")(pairing_hub=3).options()["pairing_hub"] == 3
    assert attack_instance("beyond_rank", {"pairing_hub": 3}, 0).pairing_hub == 3
    with pytest.raises(InputError, match="pairing_hub"):
        attack_instance("beyond_rank", {"pairing_hub": -1}, 0)
