"""The sentence-level repair of a guessed batch against a rounded FedAvg update (`attacks.update_sentences`)."""

from __future__ import annotations

import pytest
import torch

import textleak
from conftest import make_wide_classifier
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_sentences import SentenceRepair
from textleak.text.layouts import layout_for
from textleak.text.leaks.noise import SpanReader

TEXTS = ["the dog sat on the mat .", "a bird sang", "big cat ran quickly"]
LABELS = [0, 1, 1]
LR, STEPS = 1e-5, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A wide random BERT, its update at lr 1e-5 (the rounding ~0.8 of U's rms entry) and a BoxRepair on it."""
    wide = make_wide_classifier(tmp_path_factory.mktemp("wide-bert-sentences"))
    cap = textleak.capture_gradients(wide, TEXTS, labels=LABELS, defence=f"fedavg:{STEPS},{LR:g}")
    U, ids = cap.gradients.gradients, [list(s) for s in cap.reference.token_ids]
    layout = layout_for(wide.model)
    fits = RoundingFits(layout, U, LR, STEPS)
    reader = SpanReader([len(s) for s in ids])
    span0 = fits.span(0, reader(layout, U, 0), reader.bound(0))
    vocab = torch.tensor(sorted({t for s in ids for t in s}))
    return BoxRepair(layout, fits, span0, vocab, width=len(vocab)), ids


def test_a_whole_wrong_sentence_is_swapped_for_the_settled_one_that_fits_the_update(setup):
    box, ids = setup
    # slot 2 (6 tokens) holds a cut of slot 0's sentence, as the search settled it at lr 1e-4
    cut = ids[0][:5] + [ids[0][-1]]
    guess = [ids[0], ids[1], cut]
    near = {6: [(0.1, cut), (0.2, ids[2]), (0.3, [ids[2][0]] + ids[1][1:4] + [ids[2][4], ids[2][5]])],
            9: [(0.1, ids[0])], 5: [(0.1, ids[1])]}
    fixed, report = SentenceRepair(box, fresh=0).run(guess, LABELS, near, deadline=float("inf"))
    assert fixed == ids
    assert report["swaps"] >= 1 and report["misfit_after"] < 0.1 * report["misfit_before"]


def test_a_fresh_slot_takes_no_token_another_slot_holds_at_its_position(setup):
    box, ids = setup
    guess = [ids[0], ids[1], ids[0][:5] + [ids[0][-1]]]
    fresh = SentenceRepair(box).fill(guess, 2)
    assert len(fresh) == 6 and fresh[0] == ids[2][0] and fresh[-1] == ids[2][-1]
    assert all(fresh[p] not in {guess[0][p], guess[1][p] if p < len(guess[1]) else None} for p in range(1, 5))


def test_nothing_changes_without_a_better_sentence(setup):
    box, ids = setup
    near = {6: [(0.1, ids[2])], 9: [(0.1, ids[0])], 5: [(0.1, ids[1])]}
    fixed, report = SentenceRepair(box, fresh=1).run(ids, LABELS, near, deadline=float("inf"))
    assert fixed == ids and report["swaps"] == 0 and report["fresh"] == []


def test_two_sentences_that_took_each_others_heads_trade_them_back(setup):
    box, ids = setup
    # slot 1 holds slot 2's head and slot 2 slot 1's: no single substitution undoes that
    guess = [ids[0], ids[2][:4] + ids[1][4:], ids[1][:4] + ids[2][4:]]
    fixed, report = box.run(guess, LABELS, deadline=float("inf"), order=[])  # trades only
    assert fixed == ids and report["changes"] >= 1
