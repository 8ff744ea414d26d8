"""`beyond_rank --option sweep_order=NAME` (#16, session 34): the order the target descent sweeps its pairs in each
round (`beyond_rank_targets.TargetDescent._ordered`), on the tiny 2-layer BERT classifier of test_pooled_states."""

from __future__ import annotations

import pytest

from test_pooled_states import _two_off_setting, _wide_finisher, batch
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.errors import InputError

SWEEP = TargetDescent._sweep  # the unpatched sweep
FIXTURES = (batch,)  # test_pooled_states' module fixture, used here by name


def _swept(batch, monkeypatch, order):
    """The (distance, length) of each track as one round of sweeps reaches it, and the descent's output."""
    layout, grads, truth, pins, tracks, specials = _two_off_setting(batch, 1)
    seen = []

    def sweep(self, seq, target, options, best):
        seen.append((best, len(seq)))
        return SWEEP(self, seq, target, options, best)
    monkeypatch.setattr(TargetDescent, "_sweep", sweep)
    kw = {} if order is None else {"order": order}
    descent = TargetDescent(layout, grads, len(truth), specials, sweeps=1, **kw)
    out = descent.run([list(t) for t in tracks], [], pins.allowed)
    return seen, out, truth


def test_sweep_order_near_sweeps_the_pairs_nearest_their_states_first(batch, monkeypatch):
    seen, _, truth = _swept(batch, monkeypatch, "near")
    assert len(seen) == len(truth) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen, _, _ = _swept(batch, monkeypatch, "short")
    assert [n for _, n in seen] == sorted(n for _, n in seen)
    batch_order, out, _ = _swept(batch, monkeypatch, None)  # the default: the pairs as paired
    assert [d for d, _ in batch_order] != sorted(d for d, _ in batch_order)
    seen, again, _ = _swept(batch, monkeypatch, "batch")
    assert seen == batch_order and again == out


def test_sweep_order_reaches_the_descent_and_a_wrong_name_is_refused(batch):
    assert _wide_finisher(batch, sweep_order="near").sweep_order == "near"
    assert _wide_finisher(batch).sweep_order == "batch"  # the default
    with pytest.raises(InputError, match="sweep_order"):
        ATTACKS.get("beyond_rank")(sweep_order="far").check_options()
