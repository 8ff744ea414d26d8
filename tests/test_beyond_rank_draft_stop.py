"""`beyond_rank --option draft_stop=K` (#16, session 42): the target descent's drafts (`beyond_rank_drafts.StateDrafts`,
one length a batch, shortest first) end once K lengths in a row kept no draft, the tracks left undrafted as assembled
and the rest of the time left to the sweeps; 0 (the default): every length drafted. RT batch 64 dev 0 at 450 CPU s
(recipes/measured/large_batch_s42/): the drafts took 96.7 of the finish's CPU s and kept 1 of 34, the sweeps had 4.1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_pooled_states import _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_drafts import StateDrafts
from textleak.errors import InputError
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
LENGTHS = (4, 5, 6, 7, 8)  # one track of each length, drafted shortest first


def _drafts(stop: int, kept_lengths: set[int]):
    """StateDrafts on made-up tracks whose relaxation returns the track itself: at `kept_lengths` its distance is a
    tenth of the track's (kept), elsewhere the track's own (not kept). Returns the drafts, the lengths relaxed, and
    the tracks after."""
    relaxed = []
    tracks = [[101] + [5] * (n - 2) + [102] for n in LENGTHS]

    def states(seqs):  # the target is (0, 1): distance 0.1 at the kept lengths, else 2 (the tracks' own)
        return torch.tensor([[0.0, 1.1 if len(s) in kept_lengths else 3.0] for s in seqs], dtype=torch.float64)
    drafts = StateDrafts(SimpleNamespace(layout=SimpleNamespace(device="cpu"), states=states), steps=5, stop=stop)

    def relax(seqs, T, options, steps):
        relaxed.append(len(seqs[0]))
        return [list(s[:1]) + [6] * (len(s) - 2) + list(s[-1:]) for s in seqs]
    drafts._relaxed = relax
    T = torch.tensor([0.0, 1.0], dtype=torch.float64)
    pairs = [(r, T, 2.0) for r in range(len(tracks))]
    best = {r: 2.0 for r in range(len(tracks))}
    drafts.run(tracks, pairs, best, [])
    return drafts, relaxed, tracks


def test_off_every_length_is_drafted():
    drafts, relaxed, _ = _drafts(0, set())
    assert relaxed == list(LENGTHS) and drafts.report["drawn"] == 5 and "stopped" not in drafts.report


def test_draft_stop_ends_the_drafts_after_k_lengths_in_a_row_kept_none():
    drafts, relaxed, tracks = _drafts(2, set())
    assert relaxed == [4, 5] and drafts.report["drawn"] == 2 and drafts.report["stopped"] == 3
    assert all(set(t[1:-1]) == {5} for t in tracks)  # nothing kept: every track as assembled


def test_a_kept_draft_starts_the_count_again():
    drafts, relaxed, tracks = _drafts(2, {5})
    assert relaxed == [4, 5, 6, 7] and drafts.report["kept"] == 1 and drafts.report["stopped"] == 1
    assert [set(t[1:-1]) for t in tracks] == [{5}, {6}, {5}, {5}, {5}]


def test_draft_stop_reaches_the_descent_and_is_checked(batch):
    assert _wide_finisher(batch).draft_stop == 0  # off by default
    assert _wide_finisher(batch, draft_stop=3).draft_stop == 3
    assert ATTACKS.get("beyond_rank")(draft_stop=3).options()["draft_stop"] == 3
    assert attack_instance("beyond_rank", {"draft_stop": 3}, 0).draft_stop == 3
    with pytest.raises(InputError, match="draft_stop"):
        attack_instance("beyond_rank", {"draft_stop": -1}, 0)
