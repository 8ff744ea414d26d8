"""The token repair's cross-sentence move (`update_repair.BoxRepair._move`): a token standing in the wrong sentence
goes where it belongs while its old place takes the token ranked there, on a wide random BERT's update at lr 1e-5."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks import update as update_module
from textleak.attacks.update import UpdateExact, midpoint_model
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_sim import update_facts
from textleak.threat import Observation

TEXTS = ["a bird sang a song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-move"))
    cap = textleak.capture_gradients(wide, TEXTS, labels=LABELS, defence="fedavg:4,1e-5")  # wide rounding
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    return wide, observation, [list(s) for s in cap.reference.token_ids]


def _pins(ids):
    """Placements as the batch's embedding rows give them where they read right: each position's tokens (in the
    sentences' order) allowed, ranked and placed there."""
    order = [list(dict.fromkeys(s[p] for s in ids if p < len(s))) for p in range(max(map(len, ids)))]
    placed = {}
    for s in ids:
        for p, t in enumerate(s):
            placed.setdefault(t, set()).add(p)
    return SimpleNamespace(allowed=[set(row) for row in order], placed=placed, order=order)


def _box(wide, observation, ids, move):
    attack = UpdateExact()
    facts = update_facts(observation.metadata)
    attack._fits = RoundingFits(update_module.layout_for(wide.model), observation.gradients, facts.lr, facts.steps)
    attack._widen = None
    _, span0 = attack._layer0(observation, wide)
    layout = update_module.layout_for(midpoint_model(wide.model, observation.gradients, facts))
    comma, big = wide.tokenizer.convert_tokens_to_ids([",", "big"])
    vocab = torch.tensor(sorted({t for s in ids for t in s} | {comma, big}))
    return BoxRepair(layout, attack._fits, span0, vocab, sweeps=1, pins=_pins(ids), move=move), comma


def test_a_token_in_the_wrong_sentence_moves_back_in_one_sweep(setup):
    wide, observation, ids = setup
    sad, dot = ids[1][5], ids[0][6]
    # "a bird sang a song sad" / "the cat was very , ." (CoLA dev batch 0 at lr 1e-5 ended so): taking "sad"
    # out of the first sentence alone leaves it out of the batch (refused by `cover`)
    assert ids[0][6] == ids[1][6] == dot and sad not in ids[0] + ids[2]
    box, comma = _box(wide, observation, ids, move=True)
    wrong = [list(s) for s in ids]
    wrong[0][6], wrong[1][5] = sad, comma
    got, report = box.run(wrong, LABELS, time.monotonic() + 600)
    assert got == ids and report["moves"] >= 1
    assert report["misfit_after"] < report["misfit_before"]
    old, _ = _box(wide, observation, ids, move=False)
    kept, _ = old.run(wrong, LABELS, time.monotonic() + 600)
    assert kept[0][6] == sad  # without the move one sweep puts "sad" back into the second sentence only


def test_a_token_one_place_off_in_its_own_sentence_moves_back(setup):
    wide, observation, ids = setup
    was, very = ids[1][3], ids[1][4]
    # "the cat very big sad ." (SST-2 dev batch 0 at lr 1e-4 ended "is an decomposition ... any exercise" where
    # "is a decomposition ... an exercise" belongs): "very" out of its wrong place alone leaves it out of the batch
    assert very not in ids[0] + ids[2] and was in ids[2]
    big = wide.tokenizer.convert_tokens_to_ids("big")
    wrong = [list(s) for s in ids]
    wrong[1][3], wrong[1][4] = very, big
    box, _ = _box(wide, observation, ids, move=True)
    got, report = box.run(wrong, LABELS, time.monotonic() + 600)
    assert got == ids and report["moves"] >= 1
    old, _ = _box(wide, observation, ids, move=False)
    kept, _ = old.run(wrong, LABELS, time.monotonic() + 600)
    assert kept != ids
