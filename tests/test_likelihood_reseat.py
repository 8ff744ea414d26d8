"""`likelihood-batch` `reseat`: several slots' sentences permuted at once after the last round, on the tiny
128-wide classifier."""

from __future__ import annotations

import pytest
import torch

from conftest import make_wide_classifier
from test_likelihood_batch import _observation

TEXTS = ["a bird sang", "the dog sat on the mat", "the cat", "my old friend came home late"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-reseat"))


def _cycled(truth, pad):
    """Each slot holding the previous slot's sentence (slot i takes sentence i - 1), cut or padded at its end."""
    out = []
    for i, seq in enumerate(truth):
        src = truth[i - 1]
        body = src[1:-1][: len(seq) - 2]
        out.append([seq[0]] + body + [pad] * (len(seq) - 2 - len(body)) + [seq[-1]])
    return out


def test_seatings_are_the_permutations_that_move_two_to_most_slots():
    from textleak.attacks.likelihood_reseat import seatings

    assert list(seatings(3, 2)) == [{0: 1, 1: 0}, {0: 2, 2: 0}, {1: 2, 2: 1}]
    assert len(list(seatings(4, 3))) == 6 + 8 and len(list(seatings(4, 4))) == 23 == len(list(seatings(4, 9)))


def test_reseat_takes_a_cycle_of_three_slots_at_once(wide):
    """Three slots of different lengths holding their sentences one slot round (a 3-cycle: "the cat" in the
    3-token slot, "a bird sang" in the 6-token one, "the dog" cut from its sentence in the 2-token one): `reseat`
    (3 slots) takes the 3-cycle as one permutation, every slot then begins as its sentence and the batch misfit
    falls; moving 2 slots at most it cannot take it; from the truth it takes nothing."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, clip_norm
    from textleak.text.layouts import layout_for

    obs, truth = _observation(wide, TEXTS[:3], [1, 1, 1])
    pad = wide.tokenizer.convert_tokens_to_ids(".")
    inner = [range(1, len(s) - 1) for s in truth]
    wrong = _cycled(truth, pad)

    def batch(seqs):
        return _Batch(layout_for(wide.model), obs.gradients, seqs, [1, 1, 1], clip_norm(obs.metadata))

    moved = batch(wrong)
    record = BatchLikelihoodSearch(reseat=3)._reseated(moved, inner, pad, False, [])
    assert record["taken"] == [[{"0": 1, "1": 2, "2": 0}, False]]  # slot: the slot whose contents it took
    assert [s[:3] for s in moved.seqs] == [s[:3] for s in truth]  # "the dog" back at the front of its slot
    # 5 permutations a pass; the second pass finds none lower
    assert record["misfit_after"] < record["misfit_before"] and record["scored"] == 10
    assert all(len(m[0]) == 2 for m in BatchLikelihoodSearch(reseat=2)._reseated(batch(wrong), inner, pad, False,
                                                                                   [])["taken"])
    still = batch(truth)
    assert BatchLikelihoodSearch(reseat=3)._reseated(still, inner, pad, False, [])["taken"] == []
    assert still.seqs == truth


def test_reseat_runs_after_the_last_round_only_when_on(wide, monkeypatch):
    """The batch search calls the move once, after the last round's climbs (and `relocate`'s last move), with
    `reseat` >= 2, and records what it did (`details["reseat"]`); off (0, the default) the move does nothing and
    records None."""
    from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
    from textleak.core.budget import time_budget

    obs, truth = _observation(wide, TEXTS[:3], [1, 1, 1])
    pad = wide.tokenizer.convert_tokens_to_ids(".")
    monkeypatch.setattr(BatchLikelihoodSearch, "_settle", lambda self, batch, i, *args: (0, True))  # no climb
    wrong = _cycled(truth, pad)
    ids = torch.tensor([s + [0] * (max(map(len, truth)) - len(s)) for s in wrong])
    for k in (0, 3):
        with time_budget(60):
            out = BatchLikelihoodSearch(prior="none", rounds=1, strong=99.0, exchanges=False, relocate=False, reseat=k,
                                        initial_ids=ids, initial_labels=[1, 1, 1]).run(obs, wide)
        record = out.details["reseat"]
        assert (record is None) if k == 0 else (record["taken"] and record["misfit_after"] < record["misfit_before"])
