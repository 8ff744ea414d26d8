"""Tiny local models and tokenizers, saved and reloaded through the real `from_pretrained` path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

WORDS = ("the a cat dog bird sat ran flew on under over mat tree roof red blue green small big "
         "quickly slowly today yesterday and but was is . , happy sad old new house garden").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def make_tiny_model(folder: Path, family: str = "bert", *, hidden: int = 32, layers: int = 1,
                    seed: int = 0) -> Path:
    """Save a tiny base encoder (no task head, like MiniLM) plus its tokenizer in `folder`."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    tok = _tokenizer(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if family == "bert":
            cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=24,
                             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
            model = BertModel(cfg)
        elif family == "distilbert":
            cfg = DistilBertConfig(vocab_size=len(tok), dim=hidden, n_layers=layers, n_heads=2,
                                   hidden_dim=2 * hidden, max_position_embeddings=24)
            model = DistilBertModel(cfg)
        else:
            raise ValueError(family)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert")


@pytest.fixture(scope="session")
def tiny_bert_wide(tmp_path_factory) -> Path:
    """Hidden size above batch x length, so span-based attacks apply."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert-wide"), "bert", hidden=64)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, restoring the caller's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
