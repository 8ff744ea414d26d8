"""The token repair's cross-sentence move (`update_repair.BoxRepair._move`): a token standing in the wrong sentence
goes where it belongs while its old place takes the token ranked there, on a wide random BERT's update at lr 1e-5."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import embedding_pins, repair_inputs, wide_update_at_small_lr
from textleak.attacks.update_repair import BoxRepair

TEXTS = ["a bird sang a song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return wide_update_at_small_lr(tmp_path_factory.mktemp("wide-bert-move"), TEXTS, LABELS)


def _box(wide, observation, ids, move):
    layout, fits, span0 = repair_inputs(wide, observation)
    comma, big = wide.tokenizer.convert_tokens_to_ids([",", "big"])
    vocab = torch.tensor(sorted({t for s in ids for t in s} | {comma, big}))
    return BoxRepair(layout, fits, span0, vocab, sweeps=1, pins=embedding_pins(ids), move=move), comma


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
