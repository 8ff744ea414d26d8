"""DLG vs iDLG on DLG's LeNet over real 32x32 images (the iDLG paper's comparison).

For each of N images (alternately a scikit-learn digit upsampled from 8x8 and replicated to RGB,
and a crop of china.jpg / flower.jpg), a fresh LeNet (3x32x32, 100 classes, weights U[-0.5, 0.5]
drawn from seed i) shares the gradient of one image (batch 1); DLG (joint soft label) and iDLG
(label read from the last-layer gradient) each run L-BFGS for --steps steps. Reported per attack:
share of runs with MSE < 1e-3 on [0, 1] pixels, mean PSNR, label accuracy, seconds per image.

Results go to <out>/runs.jsonl one line per (attack, image) as soon as a run ends; rerunning
skips runs already there, so an interrupted benchmark resumes. Then <out>/summary.json, a printed
table and <out>/dlg_vs_idlg.png (ground truth, DLG, iDLG for the first images).

    python recipes/dlg_image.py --n 50 --out runs/dlg_image
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from textleak import recover
from textleak.image.capture import capture_image_gradients
from textleak.image.data import load_dataset_images
from textleak.image.modality import SUCCESS_MSE
from textleak.io import atomic_write_text

ATTACKS = ("dlg", "idlg")


def image_set(n: int):
    """Image i: digit i//2 if i is even, else photo crop i//2; labels: digit, or 10 + crop index."""
    digits = load_dataset_images("digits", list(range((n + 1) // 2)))
    photos = load_dataset_images("sample-images", list(range(n // 2)))
    for i in range(n):
        if i % 2 == 0:
            j = i // 2
            yield i, digits.names[j], digits.images[j], int(digits.labels[j])
        else:
            j = i // 2
            yield i, photos.names[j], photos.images[j], 10 + j % 90


def load_done(path: Path) -> dict[tuple[str, int], dict]:
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["attack"], row["index"])] = row
    return done


def summarise(rows: list[dict]) -> dict:
    out = {}
    for attack in ATTACKS:
        runs = [r for r in rows if r["attack"] == attack]
        if not runs:
            continue
        psnrs = [min(r["psnr"], 100.0) for r in runs]  # an exact copy (inf dB) counts as 100 dB
        out[attack] = {"runs": len(runs),
                       "share_mse_below_1e-3": sum(r["mse"] < SUCCESS_MSE for r in runs) / len(runs),
                       "mean_psnr": sum(psnrs) / len(runs),
                       "median_mse": float(np.median([r["mse"] for r in runs])),
                       "label_accuracy": sum(r["label_correct"] for r in runs) / len(runs),
                       "seconds_per_image": sum(r["seconds"] for r in runs) / len(runs)}
    return out


def figure(rows: list[dict], images: dict[int, np.ndarray], path: Path, count: int = 8) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by = {(r["attack"], r["index"]): r for r in rows}
    idx = sorted({r["index"] for r in rows if all((a, r["index"]) in by for a in ATTACKS)})[:count]
    if not idx:
        return
    fig = Figure(figsize=(1.3 * len(idx), 1.4 * (1 + len(ATTACKS)) + 0.3))
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(1 + len(ATTACKS), len(idx), squeeze=False))
    for c, i in enumerate(idx):
        axes[0, c].imshow(images[i].transpose(1, 2, 0))
        for r, attack in enumerate(ATTACKS, start=1):
            run = by[(attack, i)]
            axes[r, c].imshow(np.clip(np.asarray(run["image"]), 0, 1).transpose(1, 2, 0))
            axes[r, c].set_xlabel(f"MSE {run['mse']:.1e}", fontsize=6)
    for r, name in enumerate(("ground truth",) + ATTACKS):
        axes[r, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"LeNet, batch 1, {rows[0]['steps']} L-BFGS steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="number of images")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/dlg_image")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    done = load_done(runs_path)
    images = {}
    for i, name, image, label in image_set(args.n):
        cap = capture_image_gradients("lenet", [image], labels=[label], init_seed=i)
        images[i] = np.asarray(cap.reference.images[0])
        for attack in args.attacks:
            if (attack, i) in done:
                continue
            t0 = time.perf_counter()
            result = recover(gradients=cap.gradients, attack=attack, reference=cap.reference,
                             options={"steps": args.steps}, seed=0, progress=False)
            seconds = time.perf_counter() - t0
            e = result.metrics["per_example"][0]
            row = {"attack": attack, "index": i, "source": name, "label": label, "steps": args.steps,
                   "mse": e["mse"], "psnr": e["psnr"] if math.isfinite(e["psnr"]) else 1e9, "ssim": e.get("ssim"),
                   "label_correct": bool(e["label_correct"]), "predicted_label": result.prediction["labels"][0],
                   "distance": result.distance, "seconds": seconds, "assumed": result.assumed,
                   "image": result.prediction["images"][0]}
            with runs_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            done[(attack, i)] = row
            print(f"[{i + 1}/{args.n}] {attack:5s} {name:20s} MSE {e['mse']:.2e}  PSNR {e['psnr']:6.2f}  "
                  f"label {'ok' if e['label_correct'] else 'WRONG'}  {seconds:5.1f}s", flush=True)
    rows = [r for (a, i), r in sorted(done.items(), key=lambda kv: kv[0][1]) if i < args.n and a in args.attacks]
    summary = {"n": args.n, "steps": args.steps, "model": "lenet 3x32x32, 100 classes, U[-0.5,0.5] init seed i",
               "images": "alternately sklearn digits (8x8 -> 32x32, grey -> RGB) and sample-image crops",
               "threads": args.threads, "cpu_count": os.cpu_count(), "attacks": summarise(rows)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    figure(rows, images, out / "dlg_vs_idlg.png")
    print(f"\n{'attack':6s} {'runs':>5s} {'MSE<1e-3':>9s} {'mean PSNR':>10s} {'label acc':>10s} {'s/image':>8s}")
    for attack, s in summary["attacks"].items():
        print(f"{attack:6s} {s['runs']:5d} {s['share_mse_below_1e-3']:9.2f} {s['mean_psnr']:10.2f} "
              f"{s['label_accuracy']:10.2f} {s['seconds_per_image']:8.1f}")
    print(f"wrote {runs_path}, {out / 'summary.json'}, {out / 'dlg_vs_idlg.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
