"""The token repair's trial gradients a chunk at a time (`update_repair_batch`, `exact-update`'s option
`repair_batch`, off): each sentence's part of one forward and backward equals its own gradient (to float32
rounding), the repair reaches the same batch with it, and the budget is checked before each chunk. A wide random
BERT's update at lr 1e-5."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import embedding_pins, repair_inputs, wide_update_at_small_lr
from textleak.attacks import update_small_lr
from textleak.attacks.update import UpdateExact
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.update_repair_batch import TrialGradients

TEXTS = ["a bird sang a song .", "the cat was very sad .", "the film was good ."]
LABELS = [0, 1, 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return wide_update_at_small_lr(tmp_path_factory.mktemp("wide-bert-batch"), TEXTS, LABELS)


def _box(wide, observation, ids, batch=0):
    layout, fits, span0 = repair_inputs(wide, observation)
    extra = wide.tokenizer.convert_tokens_to_ids([",", "big", "dog", "red"])
    vocab = torch.tensor(sorted({t for s in ids for t in s} | set(extra)))
    box = BoxRepair(layout, fits, span0, vocab, sweeps=2, pins=embedding_pins(ids, extra))
    box.batch = batch
    return box, extra


def test_each_sentences_part_of_a_chunk_is_its_own_gradient(setup):
    wide, observation, ids = setup
    box, extra = _box(wide, observation, ids)
    seq = ids[1]
    trials = [seq[:p] + [t] + seq[p + 1:] for p in (1, 3, 5) for t in extra[:2]] + [seq]
    labels = [0, 1, 1, 0, 1, 0, 1]
    got = TrialGradients(box.layout, box.names, chunk=7).gradients(trials, labels)
    for trial, y, g in zip(trials, labels, got):
        own = box.gradient(trial, y)
        assert g.dtype == torch.float64 and g.shape == own.shape
        assert torch.allclose(g, own, rtol=1e-4, atol=1e-7 * float(own.abs().max()))
    # a sentence's label is its own: the same trial under the other label differs
    assert not torch.allclose(got[0], box.gradient(trials[0], 1 - labels[0]), atol=1e-6)
    # sentences of two lengths: each length's go through together, back in their order
    mixed = [seq, seq[:3] + seq[4:], trials[0]]
    for trial, g in zip(mixed, TrialGradients(box.layout, box.names, chunk=4).gradients(mixed, [0, 1, 0])):
        own = box.gradient(trial, [0, 1, 0][mixed.index(trial)])
        assert torch.allclose(g, own, rtol=1e-4, atol=1e-7 * float(own.abs().max()))


def test_the_repair_reaches_the_same_batch_with_its_trials_in_chunks(setup):
    wide, observation, ids = setup
    wrong = [list(s) for s in ids]
    wrong[2][2] = ids[1][2]  # "the cat was good ."
    wrong[1][4] = wide.tokenizer.convert_tokens_to_ids("big")
    plain, _ = _box(wide, observation, ids)
    got, off = plain.run(wrong, LABELS, time.monotonic() + 600)
    chunked, _ = _box(wide, observation, ids, batch=3)
    got3, on = chunked.run(wrong, LABELS, time.monotonic() + 600)
    assert got == ids and got3 == ids and on["misfit_after"] == off["misfit_after"] == 0
    # the same trials weighed, counted one a sentence
    assert on["changes"] == off["changes"] and on["trials"] == off["trials"] > 0


def test_no_chunk_once_the_budget_has_run_out(setup):
    wide, observation, ids = setup
    box, extra = _box(wide, observation, ids)
    batcher = TrialGradients(box.layout, box.names, chunk=2)
    trials = [ids[0][:1] + [t] + ids[0][2:] for t in extra]
    assert list(batcher.weigh(trials, 0, time.monotonic() - 1)) == []
    got = list(batcher.weigh(trials, 0, time.monotonic() + 600))
    assert [t for t, _ in got] == trials and len(got) == 4


def test_option_repair_batch_reaches_the_repair_off_by_default_checked(setup):
    from textleak.errors import InputError
    from textleak.validate import attack_instance

    wide, observation, ids = setup
    layout, fits, span0 = repair_inputs(wide, observation)
    vocab = torch.tensor(sorted({t for s in ids for t in s}))
    for value, want in ((None, 8), (8, 8), (0, 0)):  # 8 by default since session 45
        attack = UpdateExact() if value is None else UpdateExact(repair_batch=value)
        attack._fits = fits
        assert update_small_lr._box_repair(attack, layout, span0, vocab, embedding_pins(ids)).batch == want
    assert attack_instance("exact-update", {"repair_batch": 8}, 0).repair_batch == 8
    for bad in ("x", -1):
        with pytest.raises(InputError, match="repair_batch"):
            attack_instance("exact-update", {"repair_batch": bad}, 0)


def test_the_trades_weigh_the_same_in_chunks(setup):
    wide, observation, ids = setup
    traded = [list(s) for s in ids]
    traded[1][1], traded[2][1] = ids[2][1], ids[1][1]  # "the" and "the": a tie, so trade position 2's words
    traded[1][2], traded[2][2] = ids[2][2], ids[1][2]  # "film" and "cat"
    ends = []
    for batch in (0, 3):
        box, _ = _box(wide, observation, ids, batch=batch)
        seqs, start = box.begin(traded, LABELS, time.monotonic() + 600)
        box._exchange(seqs)
        ends.append((seqs, box.best, box.exchange_trials, box.trials, start))
    (off, best_off, trades_off, trials_off, start), (on, best_on, trades_on, trials_on, _) = ends
    assert off == on and best_on < start and best_on == pytest.approx(best_off, rel=1e-3)
    assert trades_on == trades_off > 0 and trials_on == trials_off
