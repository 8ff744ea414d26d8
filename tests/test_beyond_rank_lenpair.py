"""`beyond_rank --option length_pairing=STEPS` (#16, session 41): the target descent's states paired with lengths by
drafts at each length (`beyond_rank_lenpair.LengthPairing`), not by the distance of a generic track."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_lenpair import LengthPairing
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
SHORT, LONG = [101, 5, 102], [101, 5, 6, 102]  # a 3- and a 4-token track


class _Descent:
    """A made-up descent: a sentence's state is [its length, its first content token]."""

    layout = SimpleNamespace(device="cpu")

    def states(self, seqs):
        return torch.tensor([[float(len(s)), float(s[1])] for s in seqs], dtype=torch.float64)


class _Drafts:
    """Made-up drafts: a row drafted at length 4 for the state [4, 7] lands on it ([101, 7, 8, 102])."""

    def __init__(self):
        self.calls = []

    def _relaxed(self, seqs, T, options, steps):
        self.calls.append((len(seqs[0]), len(seqs)))
        return [[101, 7, 8, 102] if len(s) == 4 and t.tolist() == [4.0, 7.0] else list(s) for s, t in zip(seqs, T)]


def _pairing(window: int = 0):
    pairing = LengthPairing(_Descent(), 5, window=window)
    pairing.drafts = _Drafts()
    return pairing


def _run(pairing):
    """Two states: [4, 7] (a 4-token sentence) and [3.6, 5]; the 3-token track stands nearest the first by distance
    (the distance pairing gives the first state the wrong length), a draft at 4 tokens lands on it."""
    tracks = [list(SHORT), list(LONG)]
    targets = torch.tensor([[4.0, 7.0], [3.6, 5.0]], dtype=torch.float64)
    dist = torch.cdist(_Descent().states(tracks), targets) / targets.norm(dim=1)[None]
    assert dist[0, 0] + dist[1, 1] < dist[1, 0] + dist[0, 1]  # by distance: short with the 4-token state
    return tracks, pairing.run(tracks, dist, targets, [[], [5, 7], [6, 8], []]), dist


def test_states_get_the_length_their_drafts_fit_and_the_draft_replaces_its_track():
    pairing = _pairing()
    tracks, pairs, dist = _run(pairing)
    assert pairs == [(0, 1), (1, 0)]  # the 4-token track with the 4-token state
    assert tracks[1] == [101, 7, 8, 102] and float(dist[1, 0]) < 1e-12  # its draft there, nearer
    assert pairing.report["moved"] == 2 and pairing.report["replaced"] == 1
    assert sorted(pairing.drafts.calls) == [(3, 2), (4, 2)]  # every state drafted at every length


def test_a_window_drafts_only_lengths_near_the_distance_pairings():
    pairing = _pairing(window=1)
    _run(pairing)
    assert sorted(pairing.drafts.calls) == [(3, 2), (4, 2)]  # both lengths within 1 token
    pairing = LengthPairing(_Descent(), 5, window=1)
    pairing.drafts = _Drafts()
    tracks = [[101, 5, 102], [101, 5, 6, 7, 8, 102]]  # 3 and 6 tokens: 3 tokens apart
    targets = torch.tensor([[3.0, 5.0], [6.0, 5.0]], dtype=torch.float64)
    dist = torch.cdist(_Descent().states(tracks), targets) / targets.norm(dim=1)[None]
    assert pairing.run(tracks, dist, targets, [[]] * 7) == [(0, 0), (1, 1)]
    assert sorted(pairing.drafts.calls) == [(3, 1), (6, 1)]  # each state at its own length only


def test_length_pairing_in_the_descent_on_the_tiny_batch(batch):
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 4)
    tracks = tracks[1:] + tracks[:1]  # in another order: pairs by length, not by index
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=0, drafts=0, length_pairing=20)
    out = descent.run([list(t) for t in tracks], [], pins.allowed)
    assert sorted(map(len, out)) == sorted(map(len, truth)) and len(descent.pairs) == len(truth)
    assert descent.report["lenpair"]["rows"] == len(truth) * len({len(t) for t in truth})


def test_length_pairing_reaches_the_descent_and_is_checked(batch):
    assert (_wide_finisher(batch).length_pairing, _wide_finisher(batch).length_window) == (0, 0)  # off by default
    got = _wide_finisher(batch, length_pairing=20, length_window=2)
    assert (got.length_pairing, got.length_window) == (20, 2)
    assert ATTACKS.get("beyond_rank")(length_pairing=20).options()["length_pairing"] == 20
    assert attack_instance("beyond_rank", {"length_pairing": 20, "length_window": 2}, 0).length_window == 2
    for bad in ({"length_pairing": -1}, {"length_window": 1.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            attack_instance("beyond_rank", bad, 0)
