"""The one capture builder: what text and image captures record about the step they shared, and
the training protocol (`TrainingStep`) that issue #14's switches set."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.capturing import TrainingStep
from textleak.errors import InputError
from textleak.gradients import gradient_norm
from textleak.image.capture import capture_image_gradients
from textleak.text.models import load_text_model

TEXTS = ["the cat sat on the mat", "a dog ran"]


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    return load_text_model(str(tiny_bert), task="classify")


def test_text_capture_records_the_step_it_shared(classifier):
    meta = textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], seed=4).gradients.metadata
    shared = meta["capture"]
    assert shared["source"] == "capture_gradients" and shared["mode"] == "eval"
    assert shared["dropout"] == {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1}
    assert shared["clipping"] == {"max_norm": None, "clipped": None} and shared["precision"] == "float32"
    assert shared["padding"] == {"side": "right", "length": 8, "lengths": [8], "to": None, "multiple": None}
    assert shared["accumulation"] == {"steps": 1}
    assert shared["loss"] == {"function": "cross-entropy", "reduction": "mean"} and shared["defence"] is None
    assert shared["victim"]["seed"] == 4 and shared["victim"]["mask_prob"] is None
    assert meta["knowledge"]["seq_lengths"] == [8, 5] and meta["knowledge"]["labels"] is None


def test_clipping_train_mode_padding_and_precision(classifier):
    plain = textleak.capture_gradients(classifier, TEXTS, labels=[1, 0]).gradients
    clipped = textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], step=TrainingStep(clip=1e-3)).gradients
    assert clipped.metadata["capture"]["clipping"] == {"max_norm": 1e-3, "clipped": True}
    assert gradient_norm(clipped.gradients) == pytest.approx(1e-3, rel=1e-3)
    name = "classifier.weight"
    scale = 1e-3 / gradient_norm(plain.gradients)
    assert scale < 1 and torch.allclose(clipped.gradients[name], plain.gradients[name] * scale, rtol=1e-4, atol=1e-12)

    train = [textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], seed=s, step=TrainingStep(mode="train"))
             for s in (0, 0, 1)]
    assert train[0].gradients.metadata["capture"]["mode"] == "train"
    assert not torch.equal(train[0].gradients.gradients[name], plain.gradients[name])  # dropout was on
    assert torch.equal(train[0].gradients.gradients[name], train[1].gradients.gradients[name])  # seeded
    assert not torch.equal(train[0].gradients.gradients[name], train[2].gradients.gradients[name])
    assert not classifier.model.training  # the model's own mode is restored

    padded = textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], step=TrainingStep(pad_to=16))
    assert padded.gradients.metadata["capture"]["padding"]["length"] == 16
    assert padded.gradients.metadata["knowledge"]["seq_lengths"] == [8, 5]
    assert padded.reference.token_ids == textleak.capture_gradients(classifier, TEXTS, labels=[1, 0]).reference.token_ids

    half = textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], step=TrainingStep(precision="bfloat16"))
    assert half.gradients.metadata["capture"]["precision"] == "bfloat16"
    assert all(g.dtype == torch.float32 for g in half.gradients.gradients.values())
    assert not torch.equal(half.gradients.gradients[name], plain.gradients[name])


def test_bad_step_settings_are_one_line_errors(classifier):
    for bad in ({"mode": "training"}, {"precision": "fp8"}, {"clip": 0}, {"pad_to": 0}, {"accumulation": 0}):
        with pytest.raises(InputError):
            TrainingStep(**bad)
    with pytest.raises(InputError, match="padding length"):
        textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], step=TrainingStep(pad_to=6))
    with pytest.raises(InputError, match="cannot be combined with clipping"):
        textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], defence="dpsgd:1.0,0.5",
                                   step=TrainingStep(clip=1.0))
    with pytest.raises(InputError, match="cannot declare"):
        textleak.capture_gradients(classifier, TEXTS, labels=[1, 0], declare=["texts"])


def test_image_capture_uses_the_same_builder_and_takes_a_defence():
    images = torch.rand(2, 1, 8, 8)
    plain = capture_image_gradients("lenet", images, labels=[1, 2], num_classes=10, channels=1, size=8)
    noisy = capture_image_gradients("lenet", images, labels=[1, 2], num_classes=10, channels=1, size=8,
                                    defence="noise:1e-4", seed=3, declare=["batch_size", "labels"])
    shared = noisy.gradients.metadata["capture"]
    assert shared["source"] == "capture_image_gradients" and shared["padding"] is None and shared["dropout"] == {}
    assert shared["defence"]["spec"] == "noise:0.0001" and shared["victim"]["label_source"] == "given"
    assert noisy.gradients.metadata["knowledge"]["labels"] == [1, 2]
    assert noisy.gradients.metadata["knowledge"]["special_tokens"] is False
    assert not torch.equal(noisy.gradients.gradients["classifier.bias"], plain.gradients.gradients["classifier.bias"])
    assert noisy.gradients.metadata["extra"]["input_shape"] == [1, 8, 8]
