"""`--device` / `device=`: work runs where it is asked to, a GPU that is not there is a one-line
error, and the CUDA paths run where a GPU is present (skipped, saying so, where none is)."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.cli import main
from textleak.core.device import module_device, on_device
from textleak.image.capture import capture_image_gradients
from textleak.text.models import load_text_model

NO_GPU = not torch.cuda.is_available()
TEXTS = ["the cat sat on the mat", "a dog ran"]


@pytest.mark.skipif(not NO_GPU, reason="a CUDA GPU is present: --device cuda is valid here")
@pytest.mark.parametrize("command", [
    ["capture", "--text", "the cat", "--out", "g.pt"],
    ["capture", "--image", "x.png", "--out", "g.pt"],
    ["recover", "--grads", "missing.pt"],
    ["demo"],
    ["audit", "--data", "missing.tsv", "--defence", "noise:1e-3", "--out", "report"],
    ["sweep", "--spec", "missing.json", "--out", "results"],
])
def test_a_missing_gpu_is_a_one_line_error(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(command + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textleak: error: device 'cuda' asked for, but no CUDA GPU")
    assert not list(tmp_path.iterdir())  # refused before any work


def test_cpu_is_recorded_and_the_model_stays_where_it_was(tiny_bert):
    target = load_text_model(str(tiny_bert), task="classify")
    cap = textleak.capture_gradients(target, TEXTS, labels=[1, 0], device="cpu")
    res = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", options={"steps": 1},
                           progress=False, device="cpu")
    assert res.details["device"] == "cpu" and module_device(target.model).type == "cpu"
    with on_device(target.model, None) as model:
        assert model is target.model


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU here: the CUDA paths run where one is present")
def test_capture_and_every_attack_run_on_cuda(tiny_bert):
    target = load_text_model(str(tiny_bert), task="classify")
    cpu = textleak.capture_gradients(target, TEXTS, labels=[1, 0], device="cpu").gradients.gradients
    cap = textleak.capture_gradients(target, TEXTS, labels=[1, 0], device="cuda")
    assert all(g.device.type == "cpu" for g in cap.gradients.gradients.values())
    assert all(torch.allclose(cap.gradients.gradients[n], g, atol=1e-5) for n, g in cpu.items())
    assert module_device(target.model).type == "cpu"  # moved back after the step
    for attack in ("dlg", "tag", "lamp", "auto"):
        res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference,
                               options={"steps": 2} if attack != "lamp" else {"steps": 2, "prior": "none"},
                               progress=False, device="cuda")
        assert res.details["device"].startswith("cuda") and len(res.texts) == 2
    mlm = load_text_model(str(tiny_bert), task="mlm")
    cap = textleak.capture_gradients(mlm, TEXTS, seed=1, device="cuda")
    res = textleak.recover(gradients=cap.gradients, model=mlm, attack="tag", options={"steps": 2}, progress=False,
                           device="cuda")
    assert len(res.texts) == 2
    images = capture_image_gradients("lenet", torch.rand(2, 1, 8, 8), labels=[1, 2], num_classes=10, channels=1,
                                     size=8, defence="noise:1e-6", device="cuda")
    for attack in ("idlg", "ig", "dlg"):
        res = textleak.recover(gradients=images.gradients, attack=attack, options={"steps": 2}, progress=False,
                               device="cuda")
        assert len(res.prediction["images"]) == 2


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU here: the CUDA paths run where one is present")
def test_the_callback_captures_where_the_trainer_puts_the_model(tiny_bert, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from textleak.integrations.hf import GradientCaptureCallback

    target = load_text_model(str(tiny_bert), task="classify")
    tok = target.tokenizer
    data = [dict(tok(t), labels=y) for t, y in zip(TEXTS, [1, 0])]
    callback = GradientCaptureCallback(tmp_path / "caps", steps=[1], tokenizer=tok, defence="noise:1e-6")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1,
                             report_to=[], save_strategy="no", logging_strategy="no", seed=0)
    Trainer(model=target.model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
            callbacks=[callback]).train()
    assert module_device(target.model).type == "cuda"
    res = textleak.recover(gradients=callback.written[0], attack="dlg", options={"steps": 1}, progress=False,
                           device="cuda")
    assert len(res.texts) == 2 and res.details["defence"]["spec"] == "noise:1e-06"
