"""One small recovery with every text attack and the image attacks, written to JSON: run by
test_determinism.py in fresh processes, whose outputs must agree bit for bit.

usage: python tests/_repeat_run.py MODEL_DIR OUT.json

Each process starts its global RNGs from its own PYTHONHASHSEED (the test gives each a different
one), so any draw from a global RNG, or any order taken from a set or dict of strings, shows up
as a difference. Deterministic algorithms are switched on strictly (an op without a
deterministic kernel raises), and one torch thread is used.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import torch


def scramble_global_rngs() -> None:
    salt = hash("textleak determinism") % 2**31  # differs with PYTHONHASHSEED
    random.seed(salt)
    np.random.seed(salt)
    torch.manual_seed(salt)


def record(result) -> dict:
    return {"method": result.method, "prediction": result.prediction, "history": result.history,
            "distance": result.distance, "snapshots": result.snapshots, "assumed": result.assumed,
            "metrics": result.metrics, "determinism": result.determinism}


def text_runs(model_dir: str) -> dict:
    import textleak
    from textleak.text.models import load_text_model

    target = load_text_model(model_dir, task="classify")
    texts, labels = ["the cat sat on the mat .", "a big dog ran quickly"], [1, 0]
    clean = textleak.capture_gradients(target, texts, labels=labels, seed=0)
    # noise hides the rank gap: auto falls back from exact to LAMP (noisy token set, bigram prior)
    noisy = textleak.capture_gradients(target, texts, labels=labels, seed=0, defence="noise:1e-2")
    plan = [("exact", clean, {}), ("dlg", clean, {"steps": 3}), ("tag", clean, {"steps": 4}),
            ("lamp", clean, {"steps": 4, "discrete_every": 2, "proposals": 3}),
            ("auto", clean, {"steps": 4}), ("auto", noisy, {"steps": 4})]
    out = {}
    for i, (attack, cap, options) in enumerate(plan):
        res = textleak.recover(gradients=cap.gradients, model=target, attack=attack, reference=cap.reference,
                               unknown=["labels"], options=options, seed=0, progress=False)
        out[f"{i}:{attack}"] = record(res)
    return out


def image_runs() -> dict:
    import textleak
    from textleak.image.capture import capture_image_gradients

    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cap = capture_image_gradients("lenet", images, labels=[3, 7], num_classes=10, channels=1, size=8)
    out = {}
    for attack in ("dlg", "idlg", "ig"):
        res = textleak.recover(gradients=cap.gradients, attack=attack, reference=cap.reference,
                               options={"steps": 4}, seed=0, progress=False)
        out[f"image:{attack}"] = record(res)
    return out


def main(model_dir: str, out_path: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # strict: a nondeterministic kernel raises here
    scramble_global_rngs()
    runs = {**text_runs(model_dir), **image_runs()}
    import os

    runs["env"] = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}  # set by importing textleak
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(runs, fh, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
