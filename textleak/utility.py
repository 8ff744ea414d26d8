"""The accuracy a defence costs: fine-tune a classifier with the defence on every step's shared
gradient, then measure accuracy on held-out sentences.

Each step computes the batch's shared tensor with the very code capture uses
(`defences.shared_gradients`), writes it to `.grad` and takes an optimiser step (AdamW by default, or SGD), so what is
measured is the model the defended training would produce. A step whose defended gradient is
not finite (fp16 overflow) is skipped and counted, as AMP's gradient scaler would skip it.
Results depend only on the defence and the training settings, never on an attack, and are
cached on disk by a key over both (and the data files' contents). Under a time budget
(`core.budget.time_budget`) training stops at the first step past the deadline and accuracy is
measured on the model as it stands; the result records `budget` and the steps taken, and such a
cut-short run is not cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import budget as _budget
from .core.seeding import model_mode, repeatable
from .defences import parse_defence, shared_gradients
from .errors import InputError
from .io import atomic_write_text
from .data import read_sentences, shared_file
from .versions import __version__

DEFAULT_TRAIN = shared_file("train_sst2.tsv")
OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class UtilityConfig:
    """train/test: TSV files; the test rows used are test[test_skip : test_skip + n_test]
    (skip the attacked sentences); the train rows are a seeded sample of n_train."""

    train: str = DEFAULT_TRAIN
    test: str | None = None  # None: a held-out slice of `train` not used for training
    model: str | None = None
    n_train: int = 512
    n_test: int = 200
    test_skip: int = 0
    epochs: int = 1
    batch_size: int = 8  # a `batch:N` defence overrides it
    lr: float = 1e-4
    optimizer: str = "adamw"  # or "sgd" (AdamW rescales every coordinate, so noise on near-zero
    #                           gradients moves weights as much as signal; SGD does not)
    max_length: int = 32
    seed: int = 0
    head_seed: int = 0
    delta: float = 1e-5  # for DP-SGD's epsilon

    def validate(self) -> None:
        if self.n_train < 1 or self.n_test < 1 or self.epochs < 1 or self.batch_size < 1 or self.max_length < 4:
            raise InputError("utility needs n_train, n_test, epochs, batch_size >= 1 and max_length >= 4")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown utility optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {p} does not exist")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def cache_key(defence: str, config: UtilityConfig) -> str:
    blob = json.dumps({"defence": parse_defence(defence).spec, "config": asdict(config), "textleak": __version__,
                       "train": _file_digest(config.train), "test": _file_digest(config.test)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def split(config: UtilityConfig) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(training rows, held-out rows), both labelled."""
    train_rows = [(s, y) for s, y in read_sentences(config.train) if y is not None]
    if not train_rows:
        raise InputError(f"{config.train} has no labelled sentence")
    order = np.random.default_rng(config.seed).permutation(len(train_rows))
    train = [train_rows[i] for i in order[: config.n_train]]
    if config.test is None:
        held = [train_rows[i] for i in order[config.n_train:]][config.test_skip: config.test_skip + config.n_test]
    else:
        held = [(s, y) for s, y in read_sentences(config.test) if y is not None][
            config.test_skip: config.test_skip + config.n_test]
    if not held:
        raise InputError("no held-out labelled sentence left to measure accuracy on")
    return train, held


def measure_utility(defence: str, config: UtilityConfig = UtilityConfig(), *,
                    cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy of the classifier fine-tuned under `defence` (e.g. "noise:1e-3", "none")."""
    config.validate()
    parsed = parse_defence(defence)
    cache = Path(cache_dir) / f"utility-{cache_key(parsed.spec, config)}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return {**json.loads(cache.read_text(encoding="utf-8")), "cached": True}
    from .text.models import load_text_model

    train, held = split(config)
    labels = sorted({y for _, y in train} | {y for _, y in held})
    if labels[0] < 0:
        raise InputError("labels must be 0, 1, ...")
    target = load_text_model(config.model, task="classify", num_labels=max(labels) + 1, head_seed=config.head_seed)
    model, tok = target.model, target.tokenizer
    batch_size = parsed.required_batch_size() or config.batch_size
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]
    optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr)
    with repeatable(config.seed) as determinism, model_mode(model, train=True), torch.enable_grad():
        steps, skipped = _train(model, tok, train, parsed, optimizer, config, batch_size, progress)
    planned = config.epochs * (len(train) // batch_size)
    cut = _budget.current().ran_out
    accuracy = _accuracy(model, tok, held, config.max_length)
    update_norm = float(torch.sqrt(sum(((p.detach() - w0).double().pow(2).sum() for p, w0 in zip(params, initial)),
                                       torch.zeros((), dtype=torch.float64))))
    result: dict[str, Any] = {
        "defence": parsed.spec, "accuracy": accuracy, "n_train": len(train), "n_test": len(held),
        "steps": steps, "skipped_steps": skipped, "update_norm": update_norm, "batch_size": batch_size, "seconds": time.perf_counter() - t0,
        "config": asdict(config), "model": target.spec.to_dict(), "textleak": __version__,
        "planned_steps": planned, "budget": _budget.current().describe(), "determinism": determinism}
    if parsed.name == "dpsgd":
        try:
            result["epsilon"] = parsed.epsilon(steps=steps, sample_rate=batch_size / len(train), delta=config.delta)
            result["delta"] = config.delta
        except InputError as exc:  # Opacus is an optional extra: say so in the result
            result["epsilon"] = None
            result["epsilon_note"] = str(exc)
    if cache is not None and not cut:
        atomic_write_text(cache, json.dumps(result, indent=1))
    return {**result, "cached": False}


def _train(model: torch.nn.Module, tok: Any, train: list[tuple[str, int]], parsed: Any, optimizer: Any,
           config: UtilityConfig, batch_size: int, progress: bool) -> tuple[int, int]:
    """`config.epochs` epochs of steps on what `parsed` (the defence) shares; returns (steps, skipped):
    a step whose shared gradient is not finite is skipped. Stops early when the budget runs out."""
    steps = skipped = 0
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        for rows in _bar(batches, progress, f"training under {parsed.spec}"):
            if _budget.expired():
                return steps, skipped
            enc = tok([train[i][0] for i in rows], padding=True, truncation=True,
                      max_length=config.max_length, return_tensors="pt")
            y = torch.tensor([train[i][1] for i in rows])

            def loss_of(sub, enc=enc, y=y):
                sub = list(sub)
                return model(**{k: v[sub] for k, v in enc.items()}, labels=y[sub]).loss

            grads = shared_gradients(parsed, model, loss_of, len(rows), generator)
            steps += 1
            if not all(_finite(g) for g in grads.values()):
                skipped += 1
                continue
            for n, p in model.named_parameters():
                p.grad = grads.get(n)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return steps, skipped


def _accuracy(model: torch.nn.Module, tok: Any, rows: list[tuple[str, int]], max_length: int) -> float:
    correct = 0
    with model_mode(model, train=False), torch.no_grad():
        for i in range(0, len(rows), 32):
            chunk = rows[i:i + 32]
            enc = tok([s for s, _ in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
    return correct / len(rows)


def _finite(g: torch.Tensor) -> bool:
    """No NaN or infinity in `g`: its largest magnitude is finite (NaN propagates through amax).
    Half the work of isfinite(g).all(), which builds a mask as large as the model each step."""
    return g.numel() == 0 or bool(torch.isfinite(g.abs().amax()))


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
