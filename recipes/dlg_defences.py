"""DLG and the strongest registered attack against the defences of DLG's Section 5.

Zhu et al. (2019) report (from figures) that Gaussian/Laplacian noise stops DLG only from
variance 1e-2, half precision does not defend, and pruning above ~20% does. This recipe
measures the same on text: MiniLM classification, batch 1, dev sentences, for noise variance
1e-4..1e-1, pruning 1%..90% and fp16, with the accuracy each setting costs (fine-tuning on a
training subset under the defence, accuracy on dev rows not attacked).

Every (attack, defence, sentence) is a sweep unit appended to OUT/results/*.jsonl, so a killed
run resumes where it stopped; shard it with RANK/WORLD_SIZE (torchrun) or Slurm's variables.
Prints, per defence setting, ROUGE-1/2 of each attack and the model's accuracy; writes
OUT/dlg_defences.json, OUT/dlg_defences.png (ROUGE vs strength) and the HTML/Markdown report.

    python recipes/dlg_defences.py --n 20 --out results/dlg_defences          # the full run
    RANK=0 WORLD_SIZE=2 python recipes/dlg_defences.py ... & RANK=1 WORLD_SIZE=2 ...   # 2 shards
    python recipes/dlg_defences.py --out results/dlg_defences --report-only   # merge + report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from textleak.data import shared_file

DATA = shared_file("dev_sst2.tsv")
TRAIN = shared_file("train_sst2.tsv")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="sentences to attack (TSV sentence<TAB>label)")
    p.add_argument("--train", default=TRAIN, help="training split for the utility runs")
    p.add_argument("--n", type=int, default=20, help="sentences attacked (rows 0..n-1 of --data)")
    p.add_argument("--attack", default="auto", help="the strongest attack (falls back to dlg if not registered)")
    p.add_argument("--steps", type=int, help="L-BFGS steps of every attack (default: each attack's own)")
    p.add_argument("--noise", type=float, nargs="*", default=[1e-4, 1e-3, 1e-2, 1e-1])
    p.add_argument("--prune", type=float, nargs="*", default=[0.01, 0.1, 0.2, 0.5, 0.9])
    p.add_argument("--no-fp16", action="store_true")
    p.add_argument("--utility-train", type=int, default=512, help="training sentences per utility run")
    p.add_argument("--utility-test", type=int, default=180, help="held-out dev rows (after the attacked ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/dlg_defences")
    p.add_argument("--report-only", action="store_true", help="merge existing shards and write the report")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from textleak.cli import _quiet_libraries
    from textleak.report import write_report
    from textleak.sweep import SweepSpec, merge, run_sweep, strongest_attack

    _quiet_libraries()
    out = Path(args.out)
    strong = strongest_attack(args.attack)
    attacks = ["dlg"] + ([strong] if strong != "dlg" else [])
    defences = (["none"] + [f"noise:{v:g}" for v in args.noise] + [f"prune:{v:g}" for v in args.prune]
                + ([] if args.no_fp16 else ["fp16"]))
    options = {a: {"steps": args.steps} for a in attacks} if args.steps else {}
    spec = SweepSpec(attacks=attacks, defences=defences, data=args.data, n=args.n, seeds=[args.seed],
                     task="classify", attack_options=options,
                     utility={"train": args.train, "test": args.data, "test_skip": max(args.n, 20),
                              "n_train": args.utility_train, "n_test": args.utility_test, "seed": args.seed})
    t0 = time.perf_counter()
    if not args.report_only:
        summary = run_sweep(spec, out / "results", progress=lambda m: print(m, flush=True))
        print(f"shard {summary.rank}/{summary.world_size}: ran {summary.ran}, skipped {summary.skipped} "
              f"already done, in {time.perf_counter() - t0:.0f}s")
        if summary.world_size > 1 and summary.rank != 0:
            return 0  # rank 0 (run last, or with --report-only) merges
    merged = merge(out / "results")
    done = {(r["attack"], r["defence"]) for r in merged["table"]}
    units = [r for r in merged["units"]]
    utility = {r["defence"]: r for r in merged["utility"]}
    print(f"\n{'defence':<14}{'accuracy':>9}" + "".join(f"{a + ' R-1':>12}{a + ' R-2':>12}" for a in attacks))
    rows = {(r["attack"], r["defence"]): r for r in merged["table"]}
    for d in defences:
        acc = utility.get(d, {}).get("accuracy")
        line = f"{d:<14}{'-' if acc is None else f'{acc:.3f}':>9}"
        for a in attacks:
            r = rows.get((a, d))
            line += _cell(r, "rouge1") + _cell(r, "rouge2")
        print(line)
    paths = write_report(merged, out, title="DLG defences on MiniLM classification (batch 1)")
    attack_seconds = [u["seconds"] for u in units]
    utility_seconds = [u.get("seconds", 0.0) for u in merged["utility"] if not u.get("cached")]
    full_units = len(attacks) * len(defences) * 20
    estimate = None
    if attack_seconds:
        per_unit = sum(attack_seconds) / len(attack_seconds)
        estimate = {"per_attack_unit_s": per_unit, "attack_units_full": full_units,
                    "utility_s_total": sum(utility_seconds),
                    "full_run_one_process_s": per_unit * full_units + sum(utility_seconds),
                    "note": "extrapolated from the units measured here on a shared 2-core CPU; indicative only"}
    summary_json = {"spec": spec.to_dict(), "attacks": attacks, "table": merged["table"],
                    "utility": merged["utility"], "units_done": len(units), "pairs_done": len(done),
                    "timing": estimate, "report": str(paths["html"]), "summary": paths["summary"]}
    (out / "dlg_defences.json").write_text(json.dumps(summary_json, indent=1, default=str), encoding="utf-8")
    (out / "dlg_defences.png").write_bytes((out / "figures" / "rouge_vs_strength.png").read_bytes())
    print("\n" + paths["summary"])
    if estimate:
        print(f"timing: {estimate['per_attack_unit_s']:.1f}s per attack unit; the full run ({full_units} attack units "
              f"+ {len(defences)} utility runs) extrapolates to {estimate['full_run_one_process_s'] / 60:.0f} min in one "
              "process (shared CPU; indicative)")
    print(f"wrote {out / 'dlg_defences.json'}, {out / 'dlg_defences.png'}, {paths['html']}")
    return 0


def _cell(row, key: str) -> str:
    return f"{'-' if row is None or key not in row else format(row[key], '.3f'):>12}"


if __name__ == "__main__":
    raise SystemExit(main())
