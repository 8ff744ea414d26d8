"""`beyond_rank --option pooled_normal=true` (#16, session 46): the pooled states' Levenberg-Marquardt steps from
J^T J and J^T r formed without the Jacobian (`leaks.pooled._Equations.normal`); the same products to float64 rounding,
so the same states and labels; off by default (the Jacobian's products, `_Equations.products`, as before). On the
tiny 2-layer BERT classifier of test_pooled_states."""

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


def _equations(layout, grads, rank):
    """The solver's equations on the first round's bases and on a deflated round's (one state taken out)."""
    Wp, bp, d, G, gamma, beta = pooled._pooler(layout, grads)
    M = G / d[:, None]
    U, _, Vh = torch.linalg.svd(M)
    P, Q = U[:, :rank], Vh[:rank].T
    eq = pooled._Equations(Wp, bp, gamma, beta)
    vstate = lambda h: 1 - torch.tanh(h @ Wp.T + bp) ** 2  # noqa: E731
    return eq, [(Q, U[:, rank:]), pooled._deflated(M, P, Q, (Q @ torch.randn(rank, 1, dtype=Q.dtype)).T, vstate,
                                                    rank)]


def test_the_normal_products_are_the_jacobians_to_rounding(batch):
    _, layout, grads, truth, _ = batch
    eq, bases = _equations(layout, grads, len(truth))
    for rows, off in bases:
        eq.restrict(rows, off)
        a = torch.randn(16, rows.shape[1], dtype=rows.dtype, generator=torch.Generator().manual_seed(0))
        r, JtJ, g = eq.products(a)
        rn, JtJn, gn = eq.normal(a)
        assert torch.equal(r, rn)  # the residuals (and so every accept or reject) read as before
        assert float((JtJn - JtJ).norm() / JtJ.norm()) < 1e-10 and float((gn - g).norm() / g.norm()) < 1e-10


def test_the_solver_without_the_jacobian_reads_the_same_states_and_labels(batch):
    _, layout, grads, truth, states = batch
    got = [pooled.pooled_states(layout, grads, len(truth), _random_starts(layout, truth, random.Random(0)), first=64,
                                later=32, normal=normal) for normal in (False, True)]
    assert got[0].complete and got[1].complete and got[0].labels == got[1].labels
    assert float(((got[1].states - got[0].states).norm(dim=1) / got[0].states.norm(dim=1)).max()) < 1e-6
    rel = torch.cdist(got[1].states, states) / states.norm(dim=1)[None]
    assert float(rel.min(1)[0].max()) < 1e-3


def test_the_default_solver_forms_the_jacobian(batch, monkeypatch):
    _, layout, grads, truth, _ = batch
    asked = []
    monkeypatch.setattr(pooled._Equations, "normal", lambda self, a: asked.append(1))
    assert pooled.pooled_states(layout, grads, len(truth), _random_starts(layout, truth, random.Random(0)), first=16,
                                later=8, rounds=1) is not None
    assert not asked


def test_pooled_normal_is_off_by_default_checked_and_reaches_the_solver(batch, monkeypatch):
    import textleak.attacks.beyond_rank_targets as tg
    target, layout, grads, truth, _ = batch
    assert ATTACKS.get("beyond_rank")().pooled_normal is False and _wide_finisher(batch).pooled_normal is False
    assert _wide_finisher(batch, pooled_normal=True).pooled_normal is True
    assert ATTACKS.get("beyond_rank")(pooled_normal=True).options()["pooled_normal"] is True
    assert attack_instance("beyond_rank", {"pooled_normal": True}, 0).pooled_normal is True
    with pytest.raises(InputError, match="pooled_normal"):
        attack_instance("beyond_rank", {"pooled_normal": 3}, 0)
    asked = []
    monkeypatch.setattr(tg, "pooled_states", lambda *a, **k: asked.append(k["normal"]))
    for on in (False, True):
        finish = _wide_finisher(batch, pooled_normal=on)
        TargetDescent(layout, grads, len(truth), set(), pooled_normal=finish.pooled_normal).run(
            [list(s) for s in truth], [], [set()] * max(map(len, truth)))
    assert asked == [False, True]
