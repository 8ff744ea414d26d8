"""Wall time of a small `textleak audit`, run as a user runs it (issue 18: a 3-sentence audit
under noise:1e-1 gave no answer in 25 minutes on a shared 2-core machine).

    python recipes/benchmark_audit.py                            # this checkout, torch's threads
    python recipes/benchmark_audit.py --threads 1 --label one-thread
    python recipes/benchmark_audit.py --code /path/to/old/checkout --label before --timeout 1800

Each run is `python -m textleak.cli [--threads N] audit --data D --defence SPEC --n N --out DIR`
in a fresh process, with --code first on PYTHONPATH (to time another checkout of textleak); a
fresh output folder, so nothing is resumed or read from a cache but the bigram prior's. The row
gives wall and CPU seconds (the child's user + system: CPU well above wall x threads' share
means threads spinning while they wait), the units finished (a run past --timeout is stopped
and counted as such) and each unit's seconds, the load average before and after (the cores
others were using), the thread settings. Rows are appended to --json, so runs at different
settings or checkouts taken one after another form one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# not textleak.data.shared_file: importing textleak here would set its thread settings (OMP_WAIT_POLICY)
# in this process's environment, which every audit it starts would then inherit
DATA = Path(os.environ.get("TEXTLEAK_DATA") or ROOT.parent / "shared" / "data")


def run_audit(args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="textleak-audit-bench-"))
    data = Path(args.data).resolve()
    cmd = [sys.executable, "-m", "textleak.cli"] + (["--threads", str(args.threads)] if args.threads else []) + \
        ["audit", "--data", str(data), "--defence", *args.defence, "--n", str(args.n), "--out", str(out / "audit"),
         "--quiet"]
    # the bigram prior's training files are looked up beside the data, whichever checkout runs
    env = {"TEXTLEAK_DATA": str(data.parent), **os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(args.code).resolve()), os.environ.get("PYTHONPATH", "")])}
    load_before = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        # run in the scratch folder: `python -m` puts the working directory first on sys.path,
        # which would shadow --code with a checkout the benchmark was started from
        proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=args.timeout)
        finished, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-400:]
    except subprocess.TimeoutExpired:
        finished, tail = False, f"stopped after {args.timeout} s"
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    units = []
    for path in sorted((out / "audit" / "results").glob("results-*.jsonl")):
        units += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    shutil.rmtree(out, ignore_errors=True)
    return {"label": args.label, "code": str(Path(args.code).resolve()), "command": " ".join(cmd[1:]),
            "threads": args.threads or "torch default", "env_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "finished": finished, "wall_s": round(wall, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "units_done": len(units), "unit_s": {u["key"]: round(u["seconds"], 1) for u in units},
            "load_before": [round(x, 1) for x in load_before], "load_after": [round(x, 1) for x in os.getloadavg()],
            "cores": os.cpu_count(), "tail": tail}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA / "dev_sst2.tsv"))
    p.add_argument("--defence", nargs="+", default=["noise:1e-1"])
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--threads", type=int, help="textleak --threads (default: torch's, one per core)")
    p.add_argument("--code", default=str(ROOT), help="checkout whose textleak runs (default: this one)")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the audit is stopped")
    p.add_argument("--json", default="results/benchmark_audit.json")
    args = p.parse_args(argv)
    row = run_audit(args)
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    print("| run | threads | finished | wall s | CPU s | units | load before -> after |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['label']} | {r['threads']} | {'yes' if r['finished'] else 'no'} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['units_done']} | {r['load_before'][0]} -> {r['load_after'][0]} |")
    print(f"per unit (s), last run: {row['unit_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
