"""Benchmark one attack over N real sentences: mean ROUGE-1/2, exact match, seconds per sentence.

    python recipes/benchmark_dlg.py --data cola --n 50 --task classify
    python recipes/benchmark_dlg.py --data ../shared/data/dev_sst2.tsv --n 20 --task mlm

--data takes a short name (cola, sst2, rt: the shared dev files, or HF `datasets` when present)
or a file. Each finished sentence is appended to <out>.jsonl at once, so a killed run resumes
where it stopped; the table and <out> (JSON) are written at the end. Sentences are shared out by
RANK/WORLD_SIZE (or Slurm's variables): start one process per rank, then run once more without
them to print the table over everything finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import textleak
from textleak.cli import _quiet_libraries, run_script
from textleak.data import load_sentences
from textleak.io import atomic_write_text
from textleak.sweep import shard_from_env
from textleak.text.models import load_text_model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="cola")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--task", choices=["classify", "mlm"], default="classify")
    p.add_argument("--model", help="default: the packaged MiniLM")
    p.add_argument("--attack", default="dlg")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/benchmark_dlg.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()

    examples = load_sentences(args.data, n=args.n)
    target = load_text_model(args.model, task=args.task)
    out = Path(args.out)
    log = out.with_suffix(".jsonl")
    key = {k: getattr(args, k) for k in ("data", "task", "model", "attack", "steps", "seed")}
    done = _finished(log, key)
    log.parent.mkdir(parents=True, exist_ok=True)
    options = {"steps": args.steps} if args.steps else {}
    rank, world = shard_from_env()
    for i, ex in enumerate(examples):
        if i in done or i % world != rank:
            continue
        cap = textleak.capture_gradients(target, [ex.text], labels=[ex.label or 0] if args.task == "classify" else None,
                                         seed=args.seed + i)
        t0 = time.perf_counter()
        result = textleak.recover(gradients=cap.gradients, model=target, attack=args.attack, reference=cap.reference,
                                  options=options, seed=args.seed, progress=False)
        row = {"key": key, "index": i, "text": ex.text, "recovered": result.texts[0],
               "tokens": len(cap.reference.token_ids[0]), "seconds": time.perf_counter() - t0,
               "method": result.method, **result.metrics["mean"]}
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        done[i] = row
        print(f"[{len(done)}/{len(examples)}] R1 {row['rouge1']:.2f} R2 {row['rouge2']:.2f} "
              f"{row['seconds']:.1f}s  {row['recovered'][:70]}", flush=True)

    if world > 1:
        print(f"rank {rank}/{world} finished its sentences; run without RANK/WORLD_SIZE for the table")
        return 0
    write_summary(args, _finished(log, key), len(examples), out)  # other ranks' sentences too
    print(f"wrote {out} and {log}")
    return 0


def write_summary(args, done: dict[int, dict], n: int, out: Path) -> None:
    """The mean ROUGE, exact match, seconds and tokens of the first `n` sentences: a table line and OUT."""
    rows = [done[i] for i in sorted(done) if i < n]
    summary = {
        "data": args.data, "task": args.task, "attack": args.attack, "n": len(rows),
        "rouge1": statistics.mean(r["rouge1"] for r in rows), "rouge2": statistics.mean(r["rouge2"] for r in rows),
        "rougeL": statistics.mean(r["rougeL"] for r in rows),
        "exact_match": statistics.mean(r["exact_match"] for r in rows),
        "seconds_per_sentence": statistics.mean(r["seconds"] for r in rows),
        "mean_tokens": statistics.mean(r["tokens"] for r in rows),
        "versions": textleak.versions.versions(), "args": vars(args),
    }
    print("\n| data | task | attack | n | ROUGE-1 | ROUGE-2 | exact | s/sentence | tokens |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|")
    print(f"| {args.data} | {args.task} | {args.attack} | {summary['n']} | {100 * summary['rouge1']:.1f} | "
          f"{100 * summary['rouge2']:.1f} | {100 * summary['exact_match']:.1f} | "
          f"{summary['seconds_per_sentence']:.1f} | {summary['mean_tokens']:.1f} |")
    atomic_write_text(out, json.dumps({"summary": summary, "rows": rows}, indent=1))


def _finished(log: Path, key: dict) -> dict[int, dict]:
    if not log.exists():
        return {}
    rows = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: that unit runs again
        if row.get("key") == key:
            rows[row["index"]] = row
    return rows


if __name__ == "__main__":
    run_script(main, "benchmark_dlg")
