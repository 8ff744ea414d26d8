"""`beyond_rank --option lengths_delete_first=true` (#16, session 40): a stalled sweep of the target descent scores
its one-token deletions first and its insertions only where no deletion comes nearer the state
(`beyond_rank_stall.resized`); off, every deletion and insertion at once, the nearest kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from test_pooled_states import _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError
from textleak.validate import attack_instance

FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name
SEQ = [101, 5, 6, 7, 102]  # a 5-token track
OPTIONS = [[], [5, 8], [6, 8], [7, 8], [8], [8]]  # columns up to 6 tokens: one insertion in length's reach


def _descent(delete_first: bool, deletion: float):
    """A descent whose `_nearest` reads a made-up distance (deletions `deletion`, the insertion of 8 before 6
    0.4, other insertions 0.9) and records each call's trials."""
    descent = TargetDescent(SimpleNamespace(device="cpu"), {}, 2, {101, 102}, lengths=True,
                            delete_first=delete_first)
    calls = []

    def nearest(trial, target, top=1):
        calls.append([list(t) for t in trial])
        d = [deletion if len(t) < len(SEQ) else 0.4 if t[:3] == [101, 5, 8] and t[3] == 6 else 0.9 for t in trial]
        k = min(range(len(d)), key=d.__getitem__)
        return [k], [d[k]]
    descent._nearest = nearest
    return descent, calls


def test_off_the_nearest_of_all_length_changes_is_kept():
    descent, calls = _descent(False, 0.5)
    assert descent._resized(list(SEQ), None, OPTIONS, 0.6) == ([101, 5, 8, 6, 7, 102], 0.4)
    assert len(calls) == 1 and (descent.resized, descent.deleted) == (1, 0)


def test_delete_first_keeps_a_nearer_deletion_without_scoring_an_insertion():
    descent, calls = _descent(True, 0.5)
    seq, d = descent._resized(list(SEQ), None, OPTIONS, 0.6)
    assert len(seq) == len(SEQ) - 1 and d == 0.5 and (descent.resized, descent.deleted) == (1, 1)
    assert len(calls) == 1 and all(len(t) == len(SEQ) - 1 for t in calls[0])


def test_delete_first_scores_the_insertions_where_no_deletion_is_nearer():
    descent, calls = _descent(True, 0.7)
    assert descent._resized(list(SEQ), None, OPTIONS, 0.6) == ([101, 5, 8, 6, 7, 102], 0.4)
    assert [len(c[0]) for c in calls] == [len(SEQ) - 1, len(SEQ) + 1] and (descent.resized, descent.deleted) == (1, 0)
    descent, _ = _descent(True, 0.7)
    assert descent._resized(list(SEQ), None, OPTIONS, 0.3) == (SEQ, 0.3) and descent.resized == 0  # none nearer


def test_lengths_delete_first_reaches_the_descent_and_is_checked(batch):
    assert _wide_finisher(batch).lengths_delete_first is False  # off by default
    assert _wide_finisher(batch, lengths_delete_first=True).lengths_delete_first is True
    assert ATTACKS.get("beyond_rank")(lengths_delete_first=True).options()["lengths_delete_first"] is True
    assert attack_instance("beyond_rank", {"lengths_delete_first": True}, 0).lengths_delete_first is True
    with pytest.raises(InputError, match="lengths_delete_first"):
        attack_instance("beyond_rank", {"lengths_delete_first": 3}, 0)
