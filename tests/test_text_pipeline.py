"""Capture -> gradient file -> recover on tiny BERT and DistilBERT models, through the public API."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import textleak
from textleak.errors import InputError, MissingKnowledgeError, ModelMismatchError
from textleak.text.models import load_text_model


@pytest.mark.parametrize("family_fixture", ["tiny_bert", "tiny_distilbert"])
@pytest.mark.parametrize("task", ["mlm", "classify"])
def test_capture_then_recover_runs_for_each_family_and_task(request, family_fixture, task, tmp_path):
    folder = request.getfixturevalue(family_fixture)
    cap = textleak.capture_gradients(str(folder), ["the cat sat on the mat"], task=task,
                                     labels=[1] if task == "classify" else None, seed=0)
    assert cap.gradients.metadata["model"]["family"] in ("bert", "distilbert")
    grads, ref = cap.save(tmp_path / "g.pt")
    assert "the cat sat" not in grads.read_bytes().decode("latin-1")  # private text stays out
    result = textleak.recover(gradients=grads, reference=ref, options={"steps": 2}, progress=False)
    assert len(result.texts) == 1 and result.metrics["mean"]["rouge1"] >= 0
    data = json.loads(result.to_json())
    assert data["knowledge"]["seq_lengths"] == [8] and data["seed"] == 0
    assert data["versions"]["textleak"] == textleak.__version__
    assert "rouge1" in result.summary().lower() or "ROUGE-1" in result.summary()


def test_heads_missing_from_the_checkpoint_follow_the_head_seed(tiny_bert):
    a = load_text_model(str(tiny_bert), task="classify", head_seed=3)
    b = load_text_model(str(tiny_bert), task="classify", head_seed=3)
    c = load_text_model(str(tiny_bert), task="classify", head_seed=4)
    assert a.spec.weights_hash == b.spec.weights_hash != c.spec.weights_hash
    assert any("classifier" in n for n in a.spec.initialised)
    assert a.model.config._attn_implementation == "eager"


def test_capture_leaves_model_grads_mode_and_rng_untouched(tiny_bert):
    target = load_text_model(str(tiny_bert), task="classify")
    target.model.train()
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    cap = textleak.capture_gradients(target, ["a small dog"], labels=[0])
    assert target.model.training
    assert all(p.grad is None for p in target.model.parameters())
    assert torch.equal(state[0], torch.get_rng_state()) and random.getstate() == state[2]
    # the gradient is the one of HF's own loss, in eval mode
    target.model.eval()
    enc = target.tokenizer(["a small dog"], return_tensors="pt")
    target.model(**enc, labels=torch.tensor([0])).loss.backward()
    for n, p in target.model.named_parameters():
        if n in cap.gradients.gradients:
            assert torch.allclose(p.grad, cap.gradients.gradients[n], atol=1e-6)


def test_reference_is_kept_apart_from_what_the_attacker_sees(tiny_bert):
    cap = textleak.capture_gradients(str(tiny_bert), ["the red bird flew"], task="mlm", seed=1)
    k = cap.gradients.metadata["knowledge"]
    assert k["labels"] is None and k["seq_lengths"] == [6] and k["mask_positions"]
    assert cap.reference.texts == ["the red bird flew"]
    assert "texts" not in json.dumps(cap.gradients.metadata)


def test_bad_text_input(tiny_bert):
    with pytest.raises(InputError, match="text 2 is empty"):
        textleak.capture_gradients(str(tiny_bert), ["the cat", "  "], task="mlm")
    with pytest.raises(InputError, match="at most 24"):
        textleak.capture_gradients(str(tiny_bert), ["the cat " * 20], task="mlm")
    with pytest.raises(InputError, match="label 5"):
        textleak.capture_gradients(str(tiny_bert), ["the cat"], task="classify", labels=[5])


def test_mismatched_model_is_refused(tiny_bert, tiny_distilbert, tmp_path):
    cap = textleak.capture_gradients(str(tiny_bert), ["the cat sat"], task="classify", labels=[1], head_seed=1)
    cap.save(tmp_path / "g.pt")
    with pytest.raises(ModelMismatchError, match="head seed"):
        textleak.recover(gradients=tmp_path / "g.pt", model=load_text_model(str(tiny_bert), task="classify",
                                                                           head_seed=2), progress=False)
    with pytest.raises(ModelMismatchError, match="another model config"):
        textleak.recover(gradients=tmp_path / "g.pt", model=str(tiny_distilbert), progress=False)


def test_attack_without_declared_lengths_says_what_it_needs(tiny_bert):
    cap = textleak.capture_gradients(str(tiny_bert), ["the cat sat"], task="classify", labels=[1])
    with pytest.raises(MissingKnowledgeError, match="seq_lengths"):
        textleak.recover(gradients=cap.gradients, model=str(tiny_bert), attack="dlg",
                         unknown=["seq_lengths"], progress=False)


def test_dlg_recovers_a_short_sentence_exactly(tiny_bert_wide):
    target = load_text_model(str(tiny_bert_wide), task="classify")
    cap = textleak.capture_gradients(target, ["the cat sat"], labels=[1])
    result = textleak.recover(gradients=cap.gradients, model=target, reference=cap.reference, attack="dlg",
                              progress=False)
    assert all(p.grad is None for p in target.model.parameters())  # the attack leaves the model as it was
    assert result.texts == ["the cat sat"]
    assert result.metrics["mean"]["exact_match"] == 1.0
    assert result.assumed["labels"] == "optimised jointly"
    assert result.prediction["labels"] == [1]
    assert [s["step"] for s in result.snapshots] == [0, 10, 20, 30]


@pytest.mark.parametrize("family_fixture", ["tiny_bert", "tiny_distilbert"])
def test_masked_lm_dummy_loss_equals_the_models_own_loss(request, family_fixture):
    """The head-on-masked-positions shortcut must give HF's loss exactly."""
    from textleak.threat import Knowledge, Observation

    target = load_text_model(str(request.getfixturevalue(family_fixture)), task="mlm")
    cap = textleak.capture_gradients(target, ["the cat sat on the mat"], task="mlm", seed=0,
                                     declare=("batch_size", "seq_lengths", "mask_positions", "labels"))
    meta = cap.gradients.metadata
    problem = target.matching_problem(Observation(cap.gradients.gradients, meta, Knowledge.from_dict(meta["knowledge"])))
    ids = torch.tensor(cap.reference.masked_input_ids)
    variables = {"embeddings": target.model.get_input_embeddings().weight[ids].detach()}
    assert float(problem.loss(variables).detach()) == pytest.approx(meta["capture"]["victim"]["loss_value"], rel=1e-5)
    grads = problem.gradients(variables)
    for name, g in zip(problem.names, grads):
        assert torch.allclose(g, cap.gradients.gradients[name], atol=1e-5), name
