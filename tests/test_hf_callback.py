"""The TrainerCallback inside a real (tiny) transformers training run."""

from __future__ import annotations

import json

import torch
from torch.utils.data import Dataset

import textleak
from textleak.integrations.hf import GradientCaptureCallback
from textleak.text.models import load_text_model


class Sentences(Dataset):
    def __init__(self, tokenizer, texts, labels):
        self.items = [dict(tokenizer(t), labels=y) for t, y in zip(texts, labels)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_callback_writes_step_gradients_the_attacker_can_load(tiny_bert, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    target = load_text_model(str(tiny_bert), task="classify")
    tok = target.tokenizer
    data = Sentences(tok, ["the cat sat", "a dog ran quickly", "the bird flew", "a red house"], [1, 0, 1, 0])
    callback = GradientCaptureCallback(tmp_path / "caps", steps=[2], tokenizer=tok)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1,
                             gradient_accumulation_steps=2, max_steps=2, max_grad_norm=1.0, learning_rate=1e-3,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, seed=0)
    Trainer(model=target.model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
            callbacks=[callback]).train()

    assert [p.parent.name for p in callback.written] == ["step-2"]
    grads = textleak.load_gradients(callback.written[0])
    meta = grads.metadata
    shared = meta["capture"]
    assert shared["accumulation"] == {"steps": 2, "sizes": [1, 1]} and shared["clipping"]["max_norm"] == 1.0
    assert shared["padding"]["side"] == "right" and len(shared["padding"]["lengths"]) == 2  # each micro-batch's own
    assert shared["mode"] == "train" and shared["dropout"]["hidden_dropout_prob"] == 0.1
    assert shared["precision"] == "float32" and shared["victim"]["step"] == 2
    assert meta["knowledge"]["batch_size"] == 2
    norm = sum(float(g.pow(2).sum()) for g in grads.gradients.values()) ** 0.5
    assert norm <= 1.0 + 1e-4  # recorded after clipping
    ref = json.loads((callback.written[0].parent / "grads.reference.json").read_text())
    texts = ["the cat sat", "a dog ran quickly", "the bird flew", "a red house"]
    assert len(ref["texts"]) == 2 and set(ref["texts"]) <= set(texts)  # both micro-batches of step 2
    assert ref["labels"] == [[1, 0, 1, 0][texts.index(t)] for t in ref["texts"]]

    # The saved weights rebuild the model: recover loads it from the file's metadata alone.
    result = textleak.recover(gradients=callback.written[0], options={"steps": 1}, progress=False)
    assert len(result.texts) == 2


def test_callback_applies_a_defence_to_what_the_optimiser_uses(tiny_bert, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    target = load_text_model(str(tiny_bert), task="classify")
    data = Sentences(target.tokenizer, ["the cat sat", "a dog ran quickly"], [1, 0])
    callback = GradientCaptureCallback(tmp_path / "caps", steps=[1], tokenizer=target.tokenizer, defence="prune:0.9")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1,
                             max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, seed=0)
    Trainer(model=target.model, args=args, train_dataset=data,
            data_collator=DataCollatorWithPadding(target.tokenizer), callbacks=[callback]).train()
    grads = textleak.load_gradients(callback.written[0])
    assert grads.metadata["capture"]["defence"]["spec"] == "prune:0.9"
    flat = torch.cat([g.flatten() for g in grads.gradients.values()])
    assert float((flat == 0).float().mean()) >= 0.89  # 90% of the entries pruned
