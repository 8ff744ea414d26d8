"""Defences inside training: a transformers Trainer callback, and the utility measurement."""

from __future__ import annotations

import pytest
import torch

from textleak.defences import apply_to_model_grads, parse_defence
from textleak.utility import UtilityConfig, cache_key, measure_utility

from _defences_tiny import SENTENCES, make_tiny_bert, write_tsv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_bert(folder)
    data = write_tsv(folder / "train.tsv", SENTENCES * 4)
    return folder, data


def test_trainer_callback_defends_every_step(tiny, tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from textleak.text.models import load_text_model

    folder, _ = tiny
    target = load_text_model(str(folder), task="classify")
    enc = target.tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(y)} for i, (_, y) in enumerate(SENTENCES)]
    seen = []

    class Defend(TrainerCallback):
        def __init__(self):
            self.generator = torch.Generator().manual_seed(0)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            apply_to_model_grads(model, "prune:0.5", self.generator)
            after = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            expect = parse_defence("prune:0.5").apply(before, torch.Generator())
            seen.append(all(torch.equal(after[n], expect[n]) for n in before))

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                             max_grad_norm=0.0, disable_tqdm=True)
    Trainer(model=target.model, args=args, train_dataset=rows, callbacks=[Defend()]).train()
    assert seen == [True, True]


def test_utility_is_measured_cached_and_keyed_by_defence(tiny, tmp_path):
    folder, data = tiny
    cfg = UtilityConfig(train=str(data), model=str(folder), n_train=8, n_test=6, batch_size=2, max_length=16)
    first = measure_utility("none", cfg, cache_dir=tmp_path)
    assert 0 <= first["accuracy"] <= 1 and first["steps"] == 4 and first["n_test"] == 6 and not first["cached"]
    again = measure_utility("none", cfg, cache_dir=tmp_path)
    assert again["cached"] and again["accuracy"] == first["accuracy"]
    assert cache_key("none", cfg) != cache_key("noise:0.1", cfg)
    assert cache_key("noise:1e-1", cfg) == cache_key("noise:0.1", cfg)
    dp = measure_utility("dpsgd:1.0,1.0", cfg)
    assert dp["steps"] == 4 and (dp["epsilon"] is None or dp["epsilon"] > 0)
    big = measure_utility("batch:4", cfg)
    assert big["batch_size"] == 4 and big["steps"] == 2


def test_utility_training_changes_with_the_defence(tiny):
    """The defence really reaches the optimiser: heavy noise moves the weights far more."""
    from textleak.text.models import load_text_model
    folder, data = tiny
    cfg = UtilityConfig(train=str(data), model=str(folder), n_train=8, n_test=4, batch_size=2, lr=1e-2)
    a = measure_utility("none", cfg)
    b = measure_utility("noise:1e-1", cfg)
    assert a["steps"] == b["steps"] == 4
    # AdamW moves every coordinate with a non-zero gradient by about lr per step: with noise that is
    # all of them, without it only the rows of the words seen (most embedding rows stay put).
    assert b["update_norm"] > 5 * a["update_norm"] > 0
    assert load_text_model(str(folder), task="classify").spec.weights_hash == a["model"]["weights_hash"]
