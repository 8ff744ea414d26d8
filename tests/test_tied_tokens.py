"""The input token set of a masked-LM step with a tied output layer (`leaks.tied_token_set`)."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.text.models import load_text_model

WORDS = [f"w{i}" for i in range(1495)]  # 1500 rows for 64 hidden units: past `TIED_ROWS` x the width


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    root = tmp_path_factory.mktemp("tied-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(root)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=32)).save_pretrained(root)
    torch.set_num_threads(1)
    return load_text_model(str(root), task="mlm")


TEXTS = ["w3 w17 w250 w9 w17 w40 w301", "w5 w6 w7 w8 w9 w10", "w200 w201 w3 w99"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tied_head_gives_the_input_tokens_exactly(target, seed):
    cap = textleak.capture_gradients(target, TEXTS, task="mlm", seed=seed)
    layout = layout_for(target.model)
    assert layout.tied and leaks.embedding_token_set(layout, cap.gradients.gradients) is None  # dense rows
    got = leaks.tied_token_set(layout, cap.gradients.gradients)
    inputs = {t for s in cap.reference.masked_input_ids for t in s}  # [MASK] and random swaps included
    assert got is not None and set(got.tolist()) == inputs


def test_tied_token_set_refuses_what_it_cannot_read(target):
    layout = layout_for(target.model)
    noisy = textleak.capture_gradients(target, TEXTS, task="mlm", seed=0, defence="noise:1e-8")
    assert leaks.tied_token_set(layout, noisy.gradients.gradients) is None  # no rank gap under noise
    few = {k: v[:1200] if k == layout.word_embedding_name else v
           for k, v in textleak.capture_gradients(target, TEXTS, task="mlm", seed=0).gradients.gradients.items()}
    assert leaks.tied_token_set(layout, few) is None  # inputs need not be a small minority of 1200 rows


def test_exact_reads_a_tied_masked_lm_sentence_from_its_token_set(target):
    cap = textleak.capture_gradients(target, TEXTS[:1], task="mlm", seed=0)  # (2 layers of 64: 1 sentence)
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           progress=False)
    assert res.details["vocabulary"] == "word-embedding rows off the tied output layer's span"
    assert res.metrics["mean"]["exact_match"] == 1.0 and res.details["certified"]
