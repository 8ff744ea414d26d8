"""`certify_lean` (`beyond_rank`): the sentence spans keep each sentence's verdict and read the new ones shortest
first, at the query site first (`SentenceSpans.lean`), so a sentence the neighbour screen or a take has judged is not
run through the whole model again and one that fails the query skips the last layer; the verdicts are those read
afresh."""

import pytest
import torch

import textleak
from textleak.attacks import ATTACKS
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.text.leaks import sentences

from test_beyond_rank import FAST, LABELS, TEXTS, _model, _observation


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """(the tiny BERT past the rank limit, its capture of TEXTS): `test_beyond_rank`'s batch."""
    torch.set_num_threads(1)
    model = _model(tmp_path_factory.mktemp("lean-bert"), "classify")
    return model, textleak.capture_gradients(model, TEXTS, labels=LABELS, seed=1)


def _counting(monkeypatch) -> list[tuple[tuple[str, ...], list[int]]]:
    """Wraps `sentences.site_inputs`: (the sites, the lengths of the sentences) of each forward."""
    forwards: list[tuple[tuple[str, ...], list[int]]] = []
    plain = sentences.site_inputs

    def counted(layout, seqs, layer, sites):
        forwards.append((tuple(sites), [len(s) for s in seqs]))
        return plain(layout, seqs, layer, sites)

    monkeypatch.setattr(sentences, "site_inputs", counted)
    return forwards


def test_lean_verdicts_are_the_fresh_ones_each_sentence_read_once_query_first(batch, monkeypatch):
    target, capture = batch
    layout, grads, seqs = layout_for(target.model), capture.gradients.gradients, capture.reference.token_ids
    fresh = leaks.sentence_spans(layout, grads, len(TEXTS), "classify")
    lean = leaks.sentence_spans(layout, grads, len(TEXTS), "classify")
    lean.lean = True
    assert len(lean.bases) > 1
    swapped = [s[:2] + [s[3], s[2]] + s[4:] for s in seqs]
    trials = [list(s) for s in swapped[:4]] + [list(s) for s in seqs] + swapped[4:] + [list(seqs[0])]
    expect = fresh.certifies(layout, trials)
    assert expect == [False] * 4 + [True] * len(seqs) + [False] * 4 + [True]
    forwards = _counting(monkeypatch)
    assert lean.certifies(layout, trials) == expect
    query = [n for sites, f in forwards if sites == ("query",) for n in f]
    every = [n for sites, f in forwards if sites == tuple(lean.bases) for n in f]
    assert len(query) + len(every) == sum(len(f) for _, f in forwards)
    assert query == sorted(len(s) for s in seqs + swapped)  # each distinct sentence once, shortest first
    assert sorted(every) == sorted(len(s) for s in seqs)  # the last layer only for those that pass the query
    forwards.clear()
    assert lean.certifies(layout, [swapped[3], list(seqs[5])]) == [False, True]
    assert [lean.certifies(layout, [s])[0] for s in seqs] == [True] * len(seqs)
    assert forwards == []  # judged before: no forward
    assert fresh.certifies(layout, [list(seqs[5])]) == [True] and len(forwards) == 1  # off: read afresh
    # a sentence that fails only past the query is refused as without `lean`
    fresh.floors, lean.floors = {**fresh.floors, "ffn": 0.0}, {**lean.floors, "ffn": 0.0}
    lean._verdicts.clear()
    assert lean.certifies(layout, [list(seqs[1])]) == fresh.certifies(layout, [list(seqs[1])]) == [False]


def test_the_option_makes_the_spans_lean(batch, monkeypatch):
    target, capture = batch
    seen: list[bool] = []
    plain = sentences.SentenceSpans.certifies

    def spy(self, layout, seqs):
        seen.append(self.lean)
        return plain(self, layout, seqs)

    monkeypatch.setattr(sentences.SentenceSpans, "certifies", spy)
    torch.manual_seed(0)
    for lean in (True, False):
        seen.clear()
        attack = ATTACKS.get("beyond_rank")(**FAST, certify_lean=lean)
        assert attack.options()["certify_lean"] is lean
        attack.run(_observation(capture), target)
        assert seen and set(seen) == {lean}
