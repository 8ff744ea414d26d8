"""What federated clients share, attacked: FedAvg updates (K local steps x learning rate),
additive noise (variance) and DP-SGD set by its privacy budget (epsilon), on real dev sentences.

    python recipes/fl_defences.py --data cola,sst2,rt --batch-size 1,4 --n 5 \
        --fedavg 1,1e-2 4,1e-2 8,1e-2 4,1e-3 4,1e-1 --noise 1e-10 1e-8 1e-6 1e-4 1e-2 \
        --dpeps 1 8 1e3 1e6 1e9 --budget 300 --out results/fl_defences
    python recipes/fl_defences.py ... --utility 200     # + the accuracy each defence costs
    python recipes/fl_defences.py --out results/fl_defences --report-only
    python recipes/fl_defences.py --data cola,sst2 --batch-size 1,4,8 --n 1 --no-baseline --noise --dpeps \
        --fedavg 1,1e-2 2,1e-2 4,1e-2 8,1e-2 8,1e-3 8,1e-4    # a FedAvg K x lr grid alone

MiniLM classification, labels withheld, lengths declared (the capture's defaults). Each
(defence, data, batch size, batch) runs the attack (`--attack`, default `auto`) under a
wall-time budget and is appended to OUT/units.jsonl as it finishes, so an interrupted run
resumes. Prints one table per defence family (ROUGE-1 / ROUGE-2 x100, exact-match %,
certified %, seconds per batch), and, for noise and the budgets, the weakest setting at which
the attack falls below ROUGE-1 0.5 (and stays below at every stronger setting measured) with the accuracy it costs (`textleak.utility`: a fine-tune
of the classifier under the defence on training rows of the first dataset, accuracy on its dev
rows past the attacked ones, `--utility` of them); writes OUT/fl_defences.json,
OUT/fl_defences.md (the table) and OUT/fl_defences.png. `--report-only` rebuilds both from OUT/units.jsonl (and cached accuracy runs).
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
from textleak.attacks.base import prepare
from textleak.core.budget import time_budget
from textleak.data import read_sentences, shared_file
from textleak.defences import parse_defence
from textleak.errors import TextleakError
from textleak.sweep_store import keyed_records
from textleak.text.models import load_text_model
from textleak.validate import attack_instance


def specs(args) -> list[tuple[str, str, float | None]]:
    """(family, defence spec, x value) for every setting asked for."""
    out = [] if args.no_baseline else [("none", "none", None)]
    out += [("fedavg", f"fedavg:{kl}", None) for kl in args.fedavg]
    out += [("fedadamw", f"fedadamw:{kl}", None) for kl in args.fedadamw]
    out += [("noise", f"noise:{v:g}", v) for v in args.noise]
    out += [("dpeps", f"dpeps:{e:g}", e) for e in args.dpeps]
    return out


def run_unit(target, spec: str, batch, index: int, attack: str, budget: float | None, options=None) -> dict:
    texts, labels = [t for t, _ in batch], [y for _, y in batch]
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence=spec)
    # one-time work (likelihood.context's head fitted or read from its cache) before this unit's clock
    prepare(attack_instance(attack, options, index), target, noisy=parse_defence(spec).adds_noise)
    t0, c0 = time.perf_counter(), time.process_time()
    with time_budget(budget) as b:
        res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference,
                               unknown=["labels"], options=options, progress=False)
    d = res.details
    return {"method": res.method, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "certified": bool(d.get("certified")),
            "ran_out": b.ran_out, "simulation": d.get("simulation"), "noise": d.get("noise"), "repair": d.get("repair"),
            "sentence_repair": d.get("sentence_repair"), "box_misfit": (d.get("repair") or {}).get("misfit_after"),
            "layer0_retry": d.get("layer0_retry"), "placement": d.get("placement"), "ranked_fill": d.get("ranked_fill"),
            "cls_descent": d.get("cls_descent"), "passes": d.get("passes"),
            "cls_lengths_race": d.get("cls_lengths_race"),
            "rounding": (d.get("update") or {}).get("rounding"), "steps": d.get("steps"),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "recovered": res.texts, "references": texts,
            # the labels guessed (slot by slot, as `recovered`), how they were read, and the true ones
            "labels": (res.prediction or {}).get("labels"), "labels_read": (res.assumed or {}).get("labels"),
            "placements": d.get("placements"), "reference_labels": labels, "relocate_last": d.get("relocate_last"),
            "reseat": d.get("reseat"), "runs": d.get("runs"),
            **{k: res.metrics["mean"][k] for k in ("rouge1", "rouge2", "exact_match")},
            "label_accuracy": res.metrics["mean"].get("label_accuracy")}


def summarise(units: list[dict]) -> list[dict]:
    cells = defaultdict(list)
    for u in units:
        cells[(u["defence"], u["data"], u["batch_size"])].append(u)
    rows = []
    for (defence, data, bs), us in cells.items():
        ok = [u for u in us if "error" not in u]
        mean = (lambda k: sum(float(u[k]) for u in ok) / len(ok) if ok else None)  # noqa: E731
        rows.append({"defence": defence, "family": us[0]["family"], "x": us[0]["x"], "data": data, "batch_size": bs,
                     "n": len(us), "errors": len(us) - len(ok), "rouge1": mean("rouge1"), "rouge2": mean("rouge2"),
                     "exact_match": mean("exact_match"), "certified": mean("certified"),
                     "seconds": sum(u["seconds"] for u in us) / len(us),
                     "cpu_seconds": (sum(u["cpu_seconds"] for u in us) / len(us)) if all("cpu_seconds" in u for u in us)
                     else None, "methods": sorted({u.get("method", "error")
                                                                                            for u in us})})
    return rows


def table(rows: list[dict], order: list[str], datasets, sizes) -> str:
    idx = {(r["defence"], r["data"], r["batch_size"]): r for r in rows}
    lines = ["cells: ROUGE-1 / ROUGE-2 (x100), exact-match %, certified %, s/batch, n"]
    for bs in sizes:
        lines.append(f"\nbatch size {bs}")
        lines.append(f"{'defence':<22}" + "".join(f"| {d:^34}" for d in datasets))
        for spec in order:
            cells = []
            for d in datasets:
                r = idx.get((spec, d, bs))
                cells.append(f"| {'-':^34}" if r is None or r["rouge1"] is None else
                             f"| {100 * r['rouge1']:5.1f}/{100 * r['rouge2']:5.1f} EM {100 * r['exact_match']:5.1f} "
                             f"C {100 * r['certified']:3.0f} {r['seconds']:5.1f}s n{r['n']}")
            lines.append(f"{spec:<22}" + "".join(cells))
    return "\n".join(lines)


def weakest(rows: list[dict], family: str, grows: bool) -> dict | None:
    """Per family, the weakest setting whose mean ROUGE-1 over every cell is below 0.5, and so is
    every stronger setting measured (under a wall-time budget a weaker setting can score below a
    stronger one that still leaks: that one does not stop the attack)."""
    by = defaultdict(list)
    for r in rows:
        if r["family"] == family and r["rouge1"] is not None:
            by[(r["defence"], r["x"])].append(r["rouge1"])
    mean = {(x, d): sum(v) / len(v) for (d, x), v in by.items()}
    found = None
    for x, d in sorted(mean, reverse=grows):  # strongest first
        if mean[(x, d)] >= 0.5:
            break
        found = {"defence": d, "x": x, "rouge1": mean[(x, d)]}
    return found


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in ("noise", "dpeps") if any(r["family"] == f for r in rows)]
    fed = sorted({r["defence"] for r in rows if r["family"] in ("fedavg", "fedadamw")})
    panels = families + (["fedavg"] if fed else [])
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        keys = sorted({(r["data"], r["batch_size"]) for r in rows})
        for data, bs in keys:
            if panel == "fedavg":
                pts = [r for r in rows if r["defence"] in fed and r["data"] == data and r["batch_size"] == bs]
                ax.bar([f"{r['defence'][7:]}\n{data} b{bs}" for r in pts], [r["rouge1"] for r in pts])
                ax.tick_params(axis="x", labelsize=6, rotation=90)
                continue
            pts = sorted((r for r in rows if r["family"] == panel and r["data"] == data and r["batch_size"] == bs),
                         key=lambda r: r["x"])
            ax.plot([r["x"] for r in pts], [r["rouge1"] for r in pts], "o-", label=f"{data} batch {bs}")
        if panel != "fedavg":
            ax.set_xscale("log")
            ax.set_xlabel({"noise": "noise variance", "dpeps": "epsilon (DP-SGD, delta 1e-5)"}[panel])
            ax.legend(fontsize=7)
        ax.set_title(panel)
        ax.axhline(0.5, color="grey", linewidth=0.6)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ROUGE-1")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cola,sst2,rt")
    ap.add_argument("--batch-size", default="1,4")
    ap.add_argument("--n", type=int, default=5, help="batches per cell (consecutive dev sentences)")
    ap.add_argument("--start", type=int, default=0, help="the first batch's index (dev sentences from start x batch size)")
    ap.add_argument("--fedavg", nargs="*", default=["1,1e-2", "4,1e-2", "8,1e-2", "4,1e-3", "4,1e-1"],
                    help="K,LR[,MB[,SHUFFLE]] of each FedAvg (SGD) setting (K = E local epochs x mini-batches of MB)")
    ap.add_argument("--fedadamw", nargs="*", default=[],
                    help="K,LR[,MB[,WD[,SHUFFLE]]] of each FedAvg (AdamW) setting (attacked by exact-adamw)")
    ap.add_argument("--noise", nargs="*", type=float, default=[1e-10, 1e-8, 1e-6, 1e-4, 1e-2])
    ap.add_argument("--dpeps", nargs="*", type=float, default=[1, 8, 1e3, 1e6, 1e9],
                    help="DP-SGD privacy budgets (max_grad_norm 1, 1000 steps at sample rate 0.01, delta 1e-5)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the undefended gradient ('none') units")
    ap.add_argument("--attack", default="auto")
    ap.add_argument("--option", action="append", default=[], metavar="[STAGE.]KEY=VALUE",
                    help="attack settings, as textleak recover's --option (e.g. likelihood.share=0.8)")
    ap.add_argument("--budget", type=float, default=300, help="seconds per batch (the attack returns its best)")
    ap.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                    help="what the budget counts: wall seconds, or this process' CPU seconds (fair when "
                         "two arms share a loaded machine; recorded in each unit's budget)")
    ap.add_argument("--utility", type=int, default=0, help="held-out dev rows for the accuracy runs (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/fl_defences")
    ap.add_argument("--report-only", action="store_true")
    return ap


def attack_all(args, settings, datasets: list[str], sizes: list[int], log: Path, done: dict) -> None:
    """Runs every (defence, data, batch size, batch) unit not yet in `done`, appending each to `log`
    as it finishes (so an interrupted run resumes)."""
    from textleak.attacks.base import parse_options

    options = parse_options(args.option)
    target = load_text_model(None, task="classify")
    for family, spec, x in settings:
        for data in datasets:
            rows = [(t, y or 0) for t, y in read_sentences(data)]
            for bs in sizes:
                for index in range(args.start, min(args.start + args.n, len(rows) // bs)):
                    key = f"{spec}|{data}|{bs}|{index}"
                    if key in done:
                        continue
                    base = {"key": key, "defence": spec, "family": family, "x": x, "data": data,
                            "batch_size": bs, "index": index}
                    try:
                        rec = {**base, **run_unit(target, spec, rows[index * bs:(index + 1) * bs], index,
                                                  args.attack, args.budget, options)}
                    except TextleakError as exc:
                        rec = {**base, "error": str(exc), "seconds": 0.0}
                    with log.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    done[key] = rec
                    print(f"{key}: " + (f"R1 {rec['rouge1']:.3f} EM {rec['exact_match']:.2f} "
                                        f"cert {rec['certified']} {rec['seconds']:.1f}s "
                                        f"(cpu {rec['cpu_seconds']:.1f}s) [{rec['method']}]"
                                        if "error" not in rec else f"error: {rec['error']}"),
                          file=sys.stderr, flush=True)


def report(args, settings, datasets: list[str], sizes: list[int], done: dict, out: Path) -> None:
    """The tables, the weakest noise and budget (with their accuracy cost under --utility), the JSON
    and the figure, from the units asked for."""
    wanted = {s for _, s, _ in settings}
    units = [u for u in done.values() if u["defence"] in wanted and u["data"] in datasets
             and u["batch_size"] in sizes and args.start <= u["index"] < args.start + args.n]
    rows = summarise(units)
    text = [table(rows, [s for _, s, _ in settings], datasets, sizes)]
    print(text[0])
    verdicts = {}
    for family, grows in (("noise", True), ("dpeps", False)):
        w = weakest(rows, family, grows)
        if w is not None and args.utility:
            w["utility"] = accuracy_cost(w["defence"], datasets[0], args.utility, max(args.n * max(sizes), 20), out,
                                         cached_only=args.report_only)
        verdicts[family] = w
        text.append(f"weakest {family} setting below ROUGE-1 0.5: " + ("none" if w is None else
                    f"{w['defence']} (ROUGE-1 {w['rouge1']:.3f})" + (f"; accuracy {w['utility']['accuracy']:.3f} vs "
                    f"{w['utility']['baseline']:.3f} undefended" if w.get("utility") else "")))
        print(text[-1])
    (out / "fl_defences.md").write_text("```\n" + "\n".join(text) + "\n```\n", encoding="utf-8")
    (out / "fl_defences.json").write_text(json.dumps({"settings": settings, "cells": rows, "weakest": verdicts,
                                                     "args": vars(args)}, indent=1, default=str), encoding="utf-8")
    figure(rows, out / "fl_defences.png")
    print(f"wrote {out / 'fl_defences.json'}, {out / 'fl_defences.png'}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ["TEXTLEAK_BUDGET_CLOCK"] = args.budget_clock
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "units.jsonl"
    done = keyed_records(log)  # resumes: finished units are kept
    settings = specs(args)
    datasets, sizes = args.data.split(","), [int(b) for b in args.batch_size.split(",")]
    if not args.report_only:
        attack_all(args, settings, datasets, sizes, log, done)
    report(args, settings, datasets, sizes, done, out)
    return 0


def accuracy_cost(spec: str, data: str, n_test: int, skip: int, out: Path, cached_only: bool = False) -> dict | None:
    """The accuracy `spec` costs (a fine-tune under it against one without); with `cached_only`
    (--report-only) None unless both runs are in OUT/utility-cache."""
    from textleak.data import DATASETS
    from textleak.utility import UtilityConfig, cache_key, measure_utility

    stem = DATASETS[data][0] if data in DATASETS else data
    cfg = UtilityConfig(train=shared_file(f"train_{stem}.tsv"), test=shared_file(f"dev_{stem}.tsv"), test_skip=skip,
                        n_test=n_test)
    cache = out / "utility-cache"
    if cached_only and not all((cache / f"utility-{cache_key(parse_defence(s).spec, cfg)}.json").is_file()
                               for s in (spec, "none")):
        return None
    defended = measure_utility(spec, cfg, cache_dir=out / "utility-cache")
    plain = measure_utility("none", cfg, cache_dir=out / "utility-cache")
    return {"accuracy": defended["accuracy"], "baseline": plain["accuracy"],
            "cost": plain["accuracy"] - defended["accuracy"], "epsilon": defended.get("epsilon"),
            "seconds": defended["seconds"] if not defended.get("cached") else None, "data": data,
            "n_train": cfg.n_train, "n_test": defended["n_test"],  # the dev rows left past the skipped ones
            "fine_tune": {k: defended["config"][k] for k in ("epochs", "batch_size", "lr", "optimizer", "max_length")},
            "steps": defended["steps"]}


if __name__ == "__main__":
    raise SystemExit(main())
