"""`bags` (#16, large batches) on a tiny 2-layer BERT classifier 32 wide: a batch of 6 sentences
past the rank limit. The columns hold only true placements and the right slot counts, the
assembly keeps the declared lengths, a sentence of the batch scores as its own gradient says (1)
and a wrong one lower, the swap search puts exchanged tails back, and the attack reports as
certified only batch sentences and refuses where it does not apply. (Recovery on MiniLM is
measured by recipes/benchmark_text.py, too slow for a unit test.)"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import textleak
from conftest import make_word_bert
from textleak.attacks import ATTACKS
from textleak.attacks.bag_parts import ShareScorer, SpanScorer, SwapSearch, assemble, columns
from textleak.errors import MissingKnowledgeError
from textleak.text.layouts import layout_for
from textleak.text.leaks import embedding_token_set, partial_span
from textleak.text.leaks.positions import token_positions
from textleak.threat import Knowledge, Observation

WORDS = [f"w{i}" for i in range(120)]
#: 6 sentences, every content word once in the batch (so each has a share), 40 tokens > 32 wide
TEXTS = [" ".join(WORDS[i * 7 + j] for j in range(4 + i % 3)) for i in range(6)]
LABELS = [0, 1, 1, 0, 1, 0]


def _model(root, task: str):
    """A random 2-layer BERT 32 wide over WORDS (`conftest.make_word_bert`)."""
    return make_word_bert(root, WORDS, task, layers=2, positions=16)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    torch.set_num_threads(1)
    return _model(tmp_path_factory.mktemp("bags-bert"), "classify")


@pytest.fixture(scope="module")
def capture(target):
    return textleak.capture_gradients(target, TEXTS, labels=LABELS, seed=0)


@pytest.fixture(scope="module")
def parts(target, capture):
    layout, grads = layout_for(target.model), capture.gradients.gradients
    truth = [list(s) for s in capture.reference.token_ids]
    lengths = [len(s) for s in truth]
    tokens = embedding_token_set(layout, grads).tolist()
    pins = token_positions(layout, grads, tokens, max(lengths))
    tok = target.tokenizer
    cols = columns(grads[layout.word_embedding_name], pins, tokens, lengths,
                   {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id})
    return layout, grads, truth, lengths, cols


def _observation(capture, lengths: bool = True) -> Observation:
    seqs = capture.reference.token_ids
    know = Knowledge(batch_size=len(seqs), seq_lengths=tuple(len(s) for s in seqs) if lengths else None)
    return Observation(capture.gradients.gradients, capture.gradients.metadata, know)


def test_columns_hold_true_placements_and_slot_counts(parts):
    layout, _, truth, lengths, cols = parts
    assert sum(lengths) > layout.hidden_size
    for i, placed in enumerate(cols.placed):
        here = Counter(s[i] for s in truth if len(s) - 1 > i > 0)
        assert all(t in here for t in placed)
        assert len(placed) + cols.open[i] == (sum(here.values()) if i > 0 else 0)
        assert cols.ends[i] == sum(1 for n in lengths if n - 1 == i)
    assert cols.shares and all(abs(float(v.norm()) - 1) < 1e-9 for v in cols.shares.values())


def test_assembly_keeps_the_declared_lengths(target, parts):
    _, _, truth, lengths, cols = parts
    tok = target.tokenizer
    tracks = assemble(cols, len(lengths), None, tok.cls_token_id, tok.sep_token_id)
    assert sorted(len(t) for t in tracks) == sorted(lengths)
    assert all(t[0] == tok.cls_token_id and t[-1] == tok.sep_token_id for t in tracks)
    assert Counter(t for s in tracks for t in s[1:-1] if t in cols.shares) == \
        Counter(t for s in truth for t in s if t in cols.shares)  # every share-holding token used once


def test_own_gradient_scores_a_batch_sentence_one_and_a_wrong_one_lower(target, parts):
    layout, grads, truth, _, cols = parts
    scorer = ShareScorer(layout, cols.shares, 2)
    wrong = [truth[0][:2] + truth[1][2:], truth[1][:2] + truth[0][2:]]
    got = scorer.scores(truth + wrong)
    assert torch.allclose(got[:len(truth)], torch.ones(len(truth), dtype=torch.double), atol=1e-5)
    assert float(got[len(truth):].max()) < 0.999
    span = SpanScorer(layout, partial_span([grads[n] for n in layout.qkv_names(1)], 1, 4))
    assert span.scores(truth).shape == (len(truth),)


def test_swap_search_puts_exchanged_tails_back(target, parts):
    layout, _, truth, _, cols = parts
    start = [list(s) for s in truth]
    start[0], start[1] = truth[0][:2] + truth[1][2:], truth[1][:2] + truth[0][2:]
    start[2], start[3] = truth[2][:1] + truth[3][1:2] + truth[2][2:], truth[3][:1] + truth[2][1:2] + truth[3][2:]
    search = SwapSearch(ShareScorer(layout, cols.shares, 2), tries=10_000)
    assert sorted(search.run(start, sweeps=3)) == sorted(truth)
    assert search.swaps >= 2


def test_attack_certifies_only_batch_sentences(target, capture):
    out = ATTACKS.get("bags")(prior="none", sweeps=1).run(_observation(capture), target)
    truth = [list(s) for s in capture.reference.token_ids]
    rows = out.prediction["token_ids"]
    assert sorted(len(r) for r in rows) == sorted(len(s) for s in truth)
    for row, ok in zip(rows, out.details["sentence_certified"]):
        assert not ok or list(row) in truth
    assert out.details["certified_share"] == sum(out.details["sentence_certified"]) / len(rows)


def test_refuses_without_lengths_and_for_masked_lm(target, capture, tmp_path):
    with pytest.raises(MissingKnowledgeError, match="lengths"):
        ATTACKS.get("bags")().preflight(_observation(capture, lengths=False), target)
    mlm = _model(tmp_path, "mlm")
    cap = textleak.capture_gradients(mlm, TEXTS, seed=0)
    obs = Observation(cap.gradients.gradients, cap.gradients.metadata, Knowledge(batch_size=6))
    with pytest.raises(MissingKnowledgeError, match="classification"):
        ATTACKS.get("bags")().preflight(obs, mlm)
