"""A float32 client's rounding taken out of a FedAvg update's layer spans (`attacks.update_rounding`),
on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import ROUNDING_SHARE, RoundingFits, fit_in_box
from textleak.attacks.update_sim import UpdateFacts, simulate_update
from textleak.text.layouts import layout_for
from textleak.text.leaks.noise import SpanReader

TEXTS = ["the dog sat on the mat .", "a bird sang", "big cat ran quickly"]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-rounding"))


def _capture(wide, steps, lr):
    cap = textleak.capture_gradients(wide, TEXTS, labels=LABELS, defence=f"fedavg:{steps},{lr:g}")
    return cap.gradients.gradients, cap.reference.token_ids


@pytest.fixture(scope="module")
def rounded(wide):
    """4 steps at lr 1e-5: on this model the rounding's half-width is ~0.8 of U's rms entry."""
    return _capture(wide, 4, 1e-5)


def test_the_box_holds_the_average_gradient_and_the_fit_comes_closer_to_it(wide, rounded):
    U, ids = rounded
    # the average gradient along the trajectory, stepped in float64 (no rounding to speak of)
    exact = simulate_update(layout_for(copy.deepcopy(wide.model).double()), ids, LABELS, UpdateFacts(4, 1e-5))
    fits = RoundingFits(layout_for(wide.model), U, 1e-5, 4)
    rank = SpanReader([len(s) for s in ids]).bound(0)
    M, half = fits.matrices(0)
    G = torch.cat([exact[n].double() for n in layout_for(wide.model).qkv_names(0) if n in U], 0)
    assert fits.share(0) > ROUNDING_SHARE  # lr 1e-5: the rounding is a large part of U here
    assert bool(((M - G).abs() <= half * 1.001 + 1e-12).all())  # every entry within half an ulp / lr
    assert float((M - G).norm() / G.norm()) > 0.1  # 0.22 here
    fit = fit_in_box(M, half, rank)
    assert float((fit - G).norm()) < 0.65 * float((M - G).norm())  # 0.12 of G here (MiniLM lr 1e-4: 0.24 -> 0.05)


def test_the_span_is_left_alone_where_the_rounding_is_narrow(wide):
    U, ids = _capture(wide, 4, 3e-2)
    layout = layout_for(wide.model)
    reader = SpanReader([len(s) for s in ids])
    raw = reader(layout, U, 0)
    fits = RoundingFits(layout, U, 3e-2, 4)
    assert fits.share(0) < ROUNDING_SHARE
    assert fits.span(0, raw, reader.bound(0)) is raw and not fits.fits


def test_the_box_misfit_repairs_a_wrong_token_the_spans_let_through(wide, rounded):
    lr, steps = 1e-5, 4
    U, ids = rounded
    layout = layout_for(wide.model)
    fits = RoundingFits(layout, U, lr, steps)
    reader = SpanReader([len(s) for s in ids])
    span0 = fits.span(0, reader(layout, U, 0), reader.bound(0))
    vocab = torch.tensor(sorted({t for s in ids for t in s}))
    wrong = [list(s) for s in ids]
    wrong[0][2], wrong[2][1] = wrong[1][1], wrong[0][1]  # a token of another sentence in two of them
    repair = BoxRepair(layout, fits, span0, vocab, width=len(vocab))  # this random model's layer 0 ranks loosely
    assert repair.misfit(sum(repair.gradient(s, y) for s, y in zip(ids, LABELS)) / len(ids)) < \
        0.1 * repair.misfit(sum(repair.gradient(s, y) for s, y in zip(wrong, LABELS)) / len(ids))
    fixed, report = repair.run(wrong, LABELS, deadline=float("inf"), order=[0, 2])  # the two wrong ones
    assert fixed == [list(s) for s in ids] and report["misfit_after"] < report["misfit_before"]
