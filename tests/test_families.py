"""Five encoder families (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA), tiny and random, saved with
save_pretrained and reloaded: exact recovery through the command line, what each model layout
answers, and the one-line refusals (an architecture without a layout, a layout's parameters
missing from the gradient, a model not laid out as its family)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, make_tiny_model

import textleak
from textleak.attacks.exact import Exact
from textleak.cli import main
from textleak.errors import MissingKnowledgeError, UnsupportedModelError
from textleak.gradients import GradientFile
from textleak.text import leaks
from textleak.text.decode import continuation_pieces
from textleak.text.layouts import layout_for
from textleak.text.layouts.layer0 import span_residuals
from textleak.text.models import load_text_model
from textleak.threat import Knowledge, Observation

TEXTS = ["the small dog sat on the mat .", "a red bird flew over the house"]


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """family -> a 3-layer, 64-wide random base encoder (layer 1 is not the last layer, whose
    inputs the classification loss reaches only through [CLS]; 19 tokens x 3 layers < 64 for
    ALBERT's shared layers), initialised as active as a trained model (init 0.1)."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family, hidden=64, layers=3,
                                           init=0.1)
        return made[family]

    return get


def _capture(target, **kwargs):
    return textleak.capture_gradients(target, TEXTS, labels=[0, 1], seed=1, mask_prob=0.3, **kwargs)


@pytest.mark.parametrize("family,task", [(f, "classify") for f in FAMILIES] + [("roberta", "mlm"), ("distilbert", "mlm")])
def test_exact_recovers_a_batch_of_two_through_the_cli(family_model, family, task, tmp_path, capsys, one_thread):
    grads, result = tmp_path / "grads.pt", tmp_path / "result.json"
    capture = ["capture", "--model", str(family_model(family)), "--task", task, "--text", TEXTS[0], "--text", TEXTS[1],
               "--out", str(grads)] + (["--labels", "0", "1"] if task == "classify" else ["--mask-prob", "0.3", "--seed", "1"])
    assert main(capture) == 0
    assert main(["recover", "--grads", str(grads), "--attack", "exact", "--unknown", "labels", "--quiet", "--reference",
                 str(tmp_path / "grads.reference.json"), "--out", str(result)]) == 0, capsys.readouterr().err
    data = json.loads(result.read_text())
    assert data["model"]["family"] == family and data["details"]["certified"] and data["details"]["peeled"] == 2
    assert data["metrics"]["mean"]["exact_match"] == 1.0 and data["metrics"]["mean"]["label_accuracy"] == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_each_layout_answers_for_its_family(family_model, family, one_thread):
    target = load_text_model(str(family_model(family)), task="classify")
    layout = layout_for(target.model)
    params = dict(target.model.named_parameters())
    cap = _capture(target)
    grads, seq = cap.gradients.gradients, cap.reference.token_ids[0]
    names = layout.qkv_names(0) + layout.qkv_names(1) + [layout.word_embedding_name, layout.position_embedding_name]
    assert all(n in params and n in grads for n in names) and layout.qkv_names(3) == []
    ids = torch.tensor([seq])
    with torch.no_grad():  # layer 0's input from (token, position) pairs is what the model feeds it
        assert torch.allclose(layout.layer_inputs(ids, None, 0), layout.layer0_inputs(ids, torch.arange(len(seq))),
                              atol=1e-6)
        features, logits = layout.classifier_inputs(ids)
        assert torch.allclose(layout.classifier().output(features), logits, atol=1e-6)
        # the whole-vocabulary screen (LayerNorm split into token and position parts) measures
        # what building each input and projecting it measures
        basis = torch.linalg.qr(torch.randn(layout.hidden_size, 9, dtype=torch.double))[0]
        vocab, where = torch.arange(layout.word_embeddings.weight.shape[0]), [0, 2, 5]
        built = torch.stack([1 - ((h := layout.layer0_inputs(vocab, p).double()) @ basis).pow(2).sum(-1)
                             / h.pow(2).sum(-1) for p in where])
        assert torch.allclose(span_residuals(layout, vocab, where, basis), built, atol=1e-9)
    # the one-token shortcut runs the family's own layer: it equals the whole sentence's residuals
    span1 = leaks.layer_span(layout, grads, 1)
    p, options = 3, torch.tensor([seq[3], seq[5], seq[1]])
    shortcut = leaks.slot_residuals(layout, span1, torch.tensor([seq[:p]]), options, seq[p + 1:])[0]
    whole = [float(leaks.position_residuals(layout, span1, seq[:p] + [t] + seq[p + 1:])[p]) for t in options.tolist()]
    assert torch.allclose(shortcut, torch.tensor(whole, dtype=shortcut.dtype), rtol=1e-3, atol=1e-9)
    assert float(shortcut[0]) < span1.floor < float(shortcut[1:].min())
    assert leaks.max_length(layout, grads) == max(map(len, cap.reference.token_ids))
    assert set(leaks.embedding_token_set(layout, grads).tolist()) == {t for s in cap.reference.token_ids for t in s}
    mlm = layout_for(load_text_model(str(family_model(family)), task="mlm").model)
    assert mlm.tied and mlm.mlm_head().bias in dict(mlm.model.named_parameters())


def test_roberta_positions_start_past_the_padding_row(family_model):
    layout = layout_for(load_text_model(str(family_model("roberta")), task="classify").model)
    assert layout.position_offset == layout.config.pad_token_id + 1 == 2
    ids = torch.tensor([[0, 7, 9, 2]])
    with torch.no_grad():
        assert torch.allclose(layout.layer0_inputs(ids, torch.arange(4)), layout.layer_inputs(ids, None, 0), atol=1e-6)


def test_albert_layers_share_one_span(family_model):
    """Every ALBERT layer applies the same Q/K/V weights: their gradient holds every layer's
    inputs, so layer 0's span is layer 1's and its rank exceeds the batch's token count."""
    target = load_text_model(str(family_model("albert")), task="classify")
    layout = layout_for(target.model)
    assert layout.qkv_names(0) == layout.qkv_names(1) == layout.qkv_names(2) and layout.qkv_sharing(1) == 3
    grads = _capture(target).gradients.gradients
    tokens = sum(len(t) for t in target.tokenizer(TEXTS)["input_ids"])
    assert tokens < leaks.layer_span(layout, grads, 0).rank < layout.hidden_size


def test_word_pieces_are_told_for_each_tokenizer_kind(family_model):
    """Word moves need the pieces that continue a word: WordPiece marks them ("##"), byte-level
    BPE and SentencePiece mark the pieces that start one ("\u0120", "\u2581")."""
    roberta = load_text_model(str(family_model("roberta")), task="classify").tokenizer
    word, char = roberta.convert_tokens_to_ids(["\u0120the", "t"])
    assert continuation_pieces(roberta, [word, char, roberta.cls_token_id]) == {char}
    albert = load_text_model(str(family_model("albert")), task="classify").tokenizer
    assert continuation_pieces(albert, [albert.convert_tokens_to_ids("\u2581the"), albert.cls_token_id]) == set()


def test_an_architecture_without_a_layout_is_refused_in_one_line(tmp_path, capsys):
    from conftest import _tokenizer
    from transformers import MPNetConfig, MPNetModel

    folder = tmp_path / "mpnet"
    tok = _tokenizer(folder)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=26)).save_pretrained(folder)
    grads = tmp_path / "g.pt"
    assert main(["capture", "--model", str(folder), "--task", "classify", "--text", "the cat sat", "--labels", "1",
                 "--out", str(grads)]) == 0
    capsys.readouterr()
    assert main(["recover", "--grads", str(grads), "--attack", "exact", "--quiet"]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("textleak: error:") and "'mpnet'" in err[0]
    assert all(f in err[0] for f in ("bert", "roberta", "distilbert", "albert", "electra"))


def test_missing_parameters_are_named_as_the_layout_names_them(family_model, tmp_path, capsys):
    target = load_text_model(str(family_model("distilbert")), task="classify")
    cap = _capture(target)
    head_only = {n: g for n, g in cap.gradients.gradients.items() if "classifier" in n}
    path = tmp_path / "head.pt"
    GradientFile(head_only, cap.gradients.metadata).save(path)
    assert main(["recover", "--grads", str(path), "--attack", "exact", "--quiet"]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "distilbert.transformer.layer.0.attention.q_lin.weight" in err[0] and "bert.encoder" not in err[0]
    obs = Observation(head_only, cap.gradients.metadata, Knowledge.from_dict(cap.gradients.metadata["knowledge"]))
    with pytest.raises(MissingKnowledgeError, match="q_lin"):
        Exact().preflight(obs, target)
    # noise over layer 0's gradient hides its rank gap: refused before any work (at a tenth of the
    # largest entry no direction clears the noise plateau; fainter noise is read by exact's noisy variant)
    noisy = {n: g + 1e-1 * g.abs().max() * torch.randn_like(g) for n, g in cap.gradients.gradients.items()}
    with pytest.raises(MissingKnowledgeError, match="rank gap"):
        Exact().preflight(Observation(noisy, obs.metadata, obs.knowledge), target)


def test_a_model_not_laid_out_as_its_family_is_refused(family_model):
    model = load_text_model(str(family_model("bert")), task="classify").model
    del model.bert.embeddings.LayerNorm
    with pytest.raises(UnsupportedModelError, match="not laid out as BERT"):
        layout_for(model)
    with pytest.raises(UnsupportedModelError, match="supported: albert, bert"):
        layout_for(torch.nn.Linear(2, 2))


def test_exact_stops_when_its_time_budget_runs_out(family_model, one_thread):
    from textleak.core.budget import time_budget

    target = load_text_model(str(family_model("bert")), task="classify")
    cap = _capture(target)
    with time_budget(1e-3):
        res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", progress=False)
    assert res.details["budget"]["ran_out"] and len(res.texts) == 2
    assert isinstance(res.details["certified"], bool)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("family", ["bert", "albert"])
def test_exact_runs_on_the_gpu_the_model_is_on(family_model, family):
    target = load_text_model(str(family_model(family)), task="classify")
    cap = _capture(target)  # the victim on the CPU, the attacker's model on the GPU
    target.model.to("cuda")
    layout = layout_for(target.model)
    assert layout.device.type == "cuda" and leaks.layer_span(layout, cap.gradients.gradients, 0).basis.is_cuda
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           unknown=["labels"], progress=False)
    assert res.details["certified"] and res.metrics["mean"]["exact_match"] == 1.0
    assert res.prediction["labels"] == cap.reference.labels
