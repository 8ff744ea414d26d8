"""DLG and the strongest registered attack against the defences of DLG's Section 5.

Zhu et al. (2019) report (from figures) that Gaussian/Laplacian noise stops DLG only from
variance 1e-2, half precision does not defend, and pruning above ~20% does. This recipe
measures the same on text: MiniLM classification, batch 1, dev sentences, for noise variance
1e-6..1e-1, pruning 1%..90% and fp16, with the accuracy each setting costs (fine-tuning on a
training subset under the defence, accuracy on dev rows not attacked).

Budget: one DLG evaluation (forward, backward, double backward of MiniLM) costs ~0.1 s on this
CPU whatever the sentence length, and DLG's 30 strong-Wolfe L-BFGS steps take ~640 of them.
Measured on 4 CoLA sentences (2 threads): mean ROUGE-1 0.66 after 3 steps (~65 evaluations,
6.9 s), 0.75 after 5 (~107, 11.2 s), 0.84 after 12 (~254, 26 s) and 0.84 after 30 (~640, 64 s).
The recipe gives DLG 5 steps (`--dlg-steps`) so that 20 sentences x 11 settings fit the hour;
use `--dlg-steps 30` for the paper's budget.

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="sentences to attack (TSV sentence<TAB>label)")
    p.add_argument("--train", default=TRAIN, help="training split for the utility runs")
    p.add_argument("--n", type=int, default=20, help="sentences attacked (rows 0..n-1 of --data)")
    p.add_argument("--attack", default="auto", help="the strongest attack (falls back to dlg if not registered)")
    p.add_argument("--dlg-steps", type=int, default=5,
                   help="DLG's L-BFGS steps (its own default is 30; 5 keeps 20 sentences x 11 settings under an "
                        "hour on 2 cores: see the module docstring)")
    p.add_argument("--strong-steps", type=int, default=50,
                   help="steps of the strongest attack's optimisation fallback (LAMP-style Adam; default 100)")
    p.add_argument("--noise", type=float, nargs="*", default=[1e-6, 1e-4, 1e-3, 1e-2, 1e-1],
                   help="noise variances (DLG's 1e-4..1e-1, plus 1e-6 where the token-set leak still shows)")
    p.add_argument("--prune", type=float, nargs="*", default=[0.01, 0.2, 0.5, 0.9])
    p.add_argument("--no-fp16", action="store_true")
    p.add_argument("--utility-train", type=int, default=512, help="training sentences per utility run")
    p.add_argument("--utility-test", type=int, default=180, help="held-out dev rows (after the attacked ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/dlg_defences")
    p.add_argument("--report-only", action="store_true", help="merge existing shards and write the report")
    return p


def main() -> int:
    args = _parser().parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from textleak.cli import _quiet_libraries
    from textleak.sweep import SweepSpec, run_sweep, strongest_attack

    _quiet_libraries()
    out = Path(args.out)
    strong = strongest_attack(args.attack)
    attacks = ["dlg"] + ([strong] if strong != "dlg" else [])
    defences = (["none"] + [f"noise:{v:g}" for v in args.noise] + [f"prune:{v:g}" for v in args.prune]
                + ([] if args.no_fp16 else ["fp16"]))
    options = {"dlg": {"steps": args.dlg_steps}}
    if strong != "dlg":
        options[strong] = {"steps": args.strong_steps}
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
    report(spec, attacks, defences, args.n, out)
    return 0


def report(spec, attacks: list[str], defences: list[str], n: int, out: Path) -> None:
    """Merges the shards; prints the table (accuracy, ROUGE-1/2 per attack and defence) and the
    timing; writes the HTML report, OUT/dlg_defences.json and OUT/dlg_defences.png."""
    from textleak.report import write_report
    from textleak.sweep import merge

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
    # measured, not extrapolated: CPU seconds of the finished units (divide by the shards run in
    # parallel for wall time; each shard also prints its own wall time)
    per_attack = {a: [u["seconds"] for u in units if u["attack"] == a] for a in attacks}
    utility_seconds = [u.get("seconds", 0.0) for u in merged["utility"] if not u.get("cached")]
    timing = {"attack_units_done": len(units), "attack_units_planned": len(attacks) * len(defences) * n,
              "mean_s_per_unit": {a: sum(v) / len(v) for a, v in per_attack.items() if v},
              "attack_s_total": sum(u["seconds"] for u in units), "utility_s_total": sum(utility_seconds)}
    summary_json = {"spec": spec.to_dict(), "attacks": attacks, "table": merged["table"],
                    "utility": merged["utility"], "units_done": len(units), "pairs_done": len(done),
                    "timing": timing, "report": str(paths["html"]), "summary": paths["summary"]}
    (out / "dlg_defences.json").write_text(json.dumps(summary_json, indent=1, default=str), encoding="utf-8")
    (out / "dlg_defences.png").write_bytes((out / "figures" / "rouge_vs_strength.png").read_bytes())
    print("\n" + paths["summary"])
    means = ", ".join(f"{a} {v:.1f} s" for a, v in timing["mean_s_per_unit"].items())
    print(f"timing: {timing['attack_units_done']}/{timing['attack_units_planned']} attack units done, mean per unit: "
          f"{means}; {(timing['attack_s_total'] + timing['utility_s_total']) / 60:.0f} min of unit time in all "
          "(over the shards that ran in parallel)")
    print(f"wrote {out / 'dlg_defences.json'}, {out / 'dlg_defences.png'}, {paths['html']}")


def _cell(row, key: str) -> str:
    return f"{'-' if row is None or key not in row else format(row[key], '.3f'):>12}"


if __name__ == "__main__":
    raise SystemExit(main())
