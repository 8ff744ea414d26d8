"""Past the rank limit (#16) for a masked-LM step with a tied head, on a tiny BERT 32 wide (705
rows: enough for the tied head's token set): a batch of 8 sentences, 55 tokens. The last layer's
spans have one direction per declared masked position and certify true sentences read at their
slot's masked positions; a peel takes true sentences out with their masked tokens and refuses a
wrong one; the attack runs, reports certified only batch sentences (masked tokens filled in), and
refuses without declared masked positions."""

from __future__ import annotations

import pytest
import torch

import textleak
from conftest import make_word_bert
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank import SentencePeeler
from textleak.attacks.exact.candidates import declared_masks
from textleak.errors import MissingKnowledgeError
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.threat import Knowledge, Observation

WORDS = [f"w{i}" for i in range(700)]  # 705 rows for 32 hidden units: past `TIED_ROWS` x the width
TEXTS = [" ".join(f"w{i * 6 + j}" for j in range(4 + i % 3)) for i in range(8)]  # 55 tokens
FAST = {"beam": 1, "trials": 8, "restarts": 1, "widen": 1, "settle": 2, "moves": ()}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    torch.set_num_threads(1)
    return make_word_bert(tmp_path_factory.mktemp("beyond-mlm"), WORDS, "mlm", layers=3, positions=24)


@pytest.fixture(scope="module")
def capture(target):
    return textleak.capture_gradients(target, TEXTS, seed=1)


def _observation(capture, masks: bool = True) -> Observation:
    know = Knowledge.from_dict(capture.gradients.metadata["knowledge"])
    if not masks:
        know = know.without("mask_positions")
    return Observation(capture.gradients.gradients, capture.gradients.metadata, know.without("labels"))


def test_masked_lm_sentence_spans_have_one_direction_per_masked_position(target, capture):
    layout, obs = layout_for(target.model), _observation(capture)
    assert layout.tied and not leaks.layer_span(layout, obs.gradients, 1).exact
    lengths = list(obs.knowledge.seq_lengths)
    spans = leaks.sentence_spans(layout, obs.gradients, len(TEXTS), "mlm", declared_masks(obs, lengths))
    masked = sum(len(p) for p in obs.knowledge.mask_positions)
    assert spans is not None and spans.rank == masked > len(TEXTS)
    seqs = capture.reference.masked_input_ids  # the inputs the model saw ([MASK] and swaps)
    assert [spans.certifies(layout, [s])[0] for s in seqs] == [True] * len(seqs)
    swapped = [s[:2] + [s[3], s[2]] + s[4:] for s in seqs]
    assert spans.certifies(layout, swapped) == [False] * len(seqs)
    assert leaks.sentence_spans(layout, obs.gradients, len(TEXTS), "mlm") is None  # no masked positions


def test_peeling_takes_true_sentences_out_with_their_masked_tokens(target, capture):
    layout, obs = layout_for(target.model), _observation(capture)
    lengths, seqs = list(obs.knowledge.seq_lengths), capture.reference.masked_input_ids
    spans = leaks.sentence_spans(layout, obs.gradients, len(TEXTS), "mlm", declared_masks(obs, lengths))
    peeler = SentencePeeler(obs, layout, lengths, spans, drop=1, mask_id=target.tokenizer.mask_token_id)
    assert peeler.working
    assert peeler.peel(seqs[0][:2] + [seqs[1][2]] + seqs[0][3:]) is None  # one token wrong: refused
    for i, s in enumerate(seqs):
        assert peeler.peel(list(s), last=i == len(seqs) - 1) is not None
        truth = capture.reference.token_ids[i]
        assert peeler.labels[-1] == [truth[p] for p in obs.knowledge.mask_positions[peeler.slots[-1]]]


def test_runs_on_masked_lm_and_reports_certified_only_batch_sentences(target, capture):
    out = ATTACKS.get("beyond_rank")(**FAST).run(_observation(capture), target, progress=False)
    assert out.method == "beyond_rank" and len(out.prediction["token_ids"]) == len(TEXTS)
    assert out.details["sentence_rank"] == sum(len(p) for p in capture.gradients.metadata["knowledge"]["mask_positions"])
    for seq, ok in zip(out.prediction["token_ids"], out.details["sentence_certified"]):
        assert not ok or seq in capture.reference.token_ids  # masked tokens filled in


def test_refuses_masked_lm_without_declared_masked_positions(target, capture):
    with pytest.raises(MissingKnowledgeError, match="masked positions"):
        ATTACKS.get("beyond_rank")().preflight(_observation(capture, masks=False), target)
