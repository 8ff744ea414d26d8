"""Option `repair_block_peeled` (`update_repair_peeled`, session 47, off): the block sweeps screen a sentence's moves
on its own [CLS] direction, the pooler's update less the other sentences' gradients. On a wide random BERT's FedAvg
update at lr 1e-5 (the rounding box wide at the Q/K/V weights, narrow at the pooler): with the other sentences right,
the direction is the sentence's own [CLS] output and the true sentence scores below its block moves; the screen
reaches the block sweep; the option reaches the repair."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import embedding_pins, repair_inputs, wide_update_at_small_lr
from test_update_repair_blocks import _guess, _race
from textleak.attacks import update_repair_blocks
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_blocks import blocks
from textleak.attacks.update_repair_peeled import PeeledPooler, peeled_screen

TEXTS = ["a bird sang a very sad song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return wide_update_at_small_lr(tmp_path_factory.mktemp("wide-bert-peeled"), TEXTS, LABELS)


def _cls_output(layout, seq):
    """The pooler's input for `seq`: the last layer's [CLS] output (ground truth, for the test)."""
    ids = torch.tensor([seq])
    with torch.no_grad():
        out = layout.model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return out[0, 0].double()


def test_the_peeled_direction_is_the_sentences_own_cls_output_and_ranks_the_truth_first(setup):
    wide, observation, ids = setup
    layout, fits, _ = repair_inputs(wide, observation)
    peel = PeeledPooler.of(layout, fits)
    assert peel is not None
    top = torch.linalg.svd(3 * peel.U, full_matrices=False)[2][0]  # the update's own top direction, none taken out

    def off(v, h):  # h's relative residual off the unit vector v
        return float((h - (h @ v) * v).norm() / h.norm())
    for b in range(len(ids)):
        h = _cls_output(layout, ids[b])
        # measured: 0.0010-0.0011 against 0.014-0.032 (a random model's [CLS] outputs lie close together)
        own = off(peel.direction(ids, LABELS, b), h)
        assert own < 0.1 * off(top, h) and own < 2e-3
    screen = peel.screen(ids, LABELS, 0)
    moves = blocks(ids[0], 4)
    scores = screen([ids[0]] + moves)
    assert scores[0] < min(scores[1:]) and peel.screens == 1 and len(moves) > 50


def test_the_block_sweep_screens_on_the_peeled_direction_with_the_option(setup, monkeypatch):
    wide, observation, ids = setup
    layout, fits, span0 = repair_inputs(wide, observation)
    vocab = torch.tensor(sorted({t for s in ids for t in s}))
    box = BoxRepair(layout, fits, span0, vocab, sweeps=1, pins=embedding_pins(ids), block=4)
    box.screen, box.keep = (lambda trials: [0.0] * len(trials)), 2
    wrong = [list(s) for s in ids]
    wrong[0][2], wrong[0][3] = wrong[0][3], wrong[0][2]  # "a sang bird ..."
    seen = []
    plain = update_repair_blocks.least_screened

    def spy(repair, trials, keep=0, screen=None):
        seen.append(screen)
        return plain(repair, trials, keep, screen)
    monkeypatch.setattr(update_repair_blocks, "least_screened", spy)
    seqs, _ = box.begin(wrong, LABELS, time.monotonic() + 600)
    update_repair_blocks.block_step(box, seqs, 0)
    assert seen == [None] and peeled_screen(box, seqs, 0) is None  # off: the repair's own screen
    assert seqs[0] == wrong[0]  # its two weighed (all ties: the first two) lower nothing
    box.peeled = PeeledPooler.of(layout, fits)
    update_repair_blocks.block_step(box, seqs, 0)
    assert seen[-1] is not None and box.peeled.screens == 1
    assert seqs[0] == ids[0]  # the peeled screen ranks the swap back first; the plain one (all ties) did not weigh it


def test_option_repair_block_peeled_reaches_the_repair_off_by_default(monkeypatch):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    made_peel = []
    monkeypatch.setattr("textleak.attacks.update_small_lr.PeeledPooler.of",
                        lambda layout, fits: made_peel.append(1) or "peel")
    _, made = _race(monkeypatch)
    _guess(monkeypatch, "stall", repair_block_peeled=True)
    assert made[0].peeled == "peel" and made_peel == [1]
    _guess(monkeypatch, "stall")
    assert made[-1].peeled is None and UpdateExact().repair_block_peeled is False
    with pytest.raises(InputError, match="repair_block_peeled"):
        attack_instance("exact-update", {"repair_block_peeled": "yes"}, 0)
