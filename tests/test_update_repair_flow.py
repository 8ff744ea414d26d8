"""How `exact-update` hands a guess between its repairs at small learning rates (`attacks.update`): the
labels the token repair starts from, on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks import update as update_module
from textleak.attacks.base import AttackOutput
from textleak.attacks.update import UpdateExact, midpoint_model
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_sim import update_facts
from textleak.threat import Observation

TEXTS = ["the dog sat on the mat .", "a bird sang", "big cat ran quickly"]
LABELS = [0, 1, 1]
LR, STEPS = 1e-5, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A wide random BERT and its update at lr 1e-5 (the rounding ~0.8 of U's rms entry: the repairs decide)."""
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-flow"))
    cap = textleak.capture_gradients(wide, TEXTS, labels=LABELS, defence=f"fedavg:{STEPS},{LR:g}")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    return wide, observation, [list(s) for s in cap.reference.token_ids]


def _output(prediction, details):
    return AttackOutput(method="exact-update", prediction=prediction, details=details, assumed={}, config={})


def _attack(wide, observation):
    attack = UpdateExact()
    facts = update_facts(observation.metadata)
    attack._fits = RoundingFits(update_module.layout_for(wide.model), observation.gradients, facts.lr, facts.steps)
    attack._widen = None
    return attack, facts


def test_the_token_repair_starts_from_the_labels_that_fit_the_box_not_those_the_simulation_re_solved(
        setup, monkeypatch):
    wide, observation, ids = setup
    attack, facts = _attack(wide, observation)
    moved = copy.copy(wide)
    moved.model = midpoint_model(wide.model, observation.gradients, facts)
    flipped = [1 - LABELS[0]] + LABELS[1:]
    # the certificate of a wrong batch picks the labels its simulation lands closest with: here a flip
    monkeypatch.setattr(update_module, "certify_batch",
                        lambda *a, **k: ({"certified": False, "mismatch": 0.4}, list(flipped)))
    started = []

    def token_repair(self, sequences, labels, deadline, order=None, exchange=True):
        started.append(list(labels))
        return [list(s) for s in sequences], {"misfit_after": 0.0}
    monkeypatch.setattr(BoxRepair, "run", token_repair)
    cut = ids[0][:5] + [ids[0][-1]]  # slot 2 holds a cut of slot 0's sentence; the settled misses hold the true one
    near = {6: [(0.1, cut), (0.2, ids[2])], 9: [(0.1, ids[0])], 5: [(0.1, ids[1])]}
    out = _output({"token_ids": [ids[0], ids[1], cut], "labels": list(LABELS), "texts": []}, {"certified": False})
    attack._repair(observation, wide, moved, facts, out, near)
    assert out.details["sentence_repair"]["swaps"] >= 1
    # the token repair (the last call; the sentence repair's refills come first): the old code started
    # it from the simulation's flipped labels
    assert started[-1] == LABELS


def test_the_box_prefers_the_true_labels(setup):
    wide, observation, ids = setup
    attack, facts = _attack(wide, observation)
    _, span0 = attack._layer0(observation, wide)
    box = BoxRepair(update_module.layout_for(midpoint_model(wide.model, observation.gradients, facts)),
                    attack._fits, span0, torch.tensor(sorted({t for s in ids for t in s})))
    for b in range(len(LABELS)):
        flipped = LABELS[:b] + [1 - LABELS[b]] + LABELS[b + 1:]
        assert box.least_labels(ids, [flipped, LABELS]) == LABELS
        assert box.least_labels(ids, [LABELS, flipped]) == LABELS


def test_option_repair_width_sets_how_many_tokens_the_repairs_try_per_position(setup, monkeypatch):
    # session 27: at width 16, 6 true RT tokens (lr 1e-5) ranked 16-26 were never tried
    from textleak.attacks import update_small_lr
    wide, observation, ids = setup
    widths = []

    class Spy(BoxRepair):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            widths.append(self.width)

        def run(self, sequences, labels, deadline, order=None, exchange=True):
            return [list(s) for s in sequences], {"misfit_after": 0.0}
    monkeypatch.setattr(update_small_lr, "BoxRepair", Spy)
    for width in (None, 32):
        attack, facts = _attack(wide, observation)
        attack.cls_descent = False
        if width is not None:
            attack.repair_width = width
        moved = copy.copy(wide)
        moved.model = midpoint_model(wide.model, observation.gradients, facts)
        out = _output({"token_ids": [list(s) for s in ids], "labels": list(LABELS), "texts": []}, {"certified": False})
        attack._repair(observation, wide, moved, facts, out, {})
    assert widths == [16, 32]
    assert UpdateExact(repair_width=32).repair_width == 32 and UpdateExact().strict_closure is True
