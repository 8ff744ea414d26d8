"""How well the embedding gradients place tokens (`textleak.text.leaks.token_positions`).

    python recipes/token_positions.py --data cola,sst2,rt --batch-size 2,4,8,16,32 --n 10

For each batch of consecutive dev sentences (MiniLM classification, the capture's defaults): the
batch's distinct tokens, how many stand at one position only, how many of those are placed
exactly there (and no wrong placement), the candidates left per position against the layer-0
span's (which, once saturated, allows every batch token everywhere), and whether every true
(token, position) pair is still allowed. Prints a table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import textleak
from textleak.data import read_sentences
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.text.models import load_text_model


def measure(target, texts, labels, seed):
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=seed)
    ids, grads = cap.reference.token_ids, cap.gradients.gradients
    length = max(map(len, ids))
    occupants = [sum(len(s) > i for s in ids) for i in range(length)]
    layout = layout_for(target.model)
    tokens = leaks.embedding_token_set(layout, grads)
    t0 = time.perf_counter()
    found = leaks.token_positions(layout, grads, tokens.tolist(), length, occupants)
    seconds = time.perf_counter() - t0
    span0 = leaks.layer_span(layout, grads, 0)
    layer0, _ = leaks.position_candidates(layout, span0, tokens, length)
    where: dict[int, set[int]] = {}
    for s in ids:
        for i, t in enumerate(s):
            where.setdefault(t, set()).add(i)
    single = {t for t, at in where.items() if len(at) == 1}
    return {
        "tokens": len(where), "single_position": len(single),
        "placed_right": sum(found.placed.get(t) == where[t] for t in single),
        "placed_wrong": sum(not found.placed[t] <= where[t] for t in found.placed),
        "candidates_per_position": sum(map(len, found.allowed)) / length,
        "layer0_per_position": sum(len(c) for c in layer0) / length,
        "true_per_position": sum(len({s[i] for s in ids if len(s) > i}) for i in range(length)) / length,
        "truth_allowed": all(s[i] in found.allowed[i] for s in ids for i in range(len(s))),
        "threshold": found.threshold, "seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="cola,sst2,rt")
    ap.add_argument("--batch-size", default="2,4,8,16,32")
    ap.add_argument("--n", type=int, default=10, help="batches per cell")
    ap.add_argument("--out", default="results/token_positions.json")
    args = ap.parse_args(argv)
    target = load_text_model(None, task="classify")
    rows, cells = [], {}
    for data in args.data.split(","):
        sentences = read_sentences(data)
        for bs in [int(b) for b in args.batch_size.split(",")]:
            for index in range(args.n):
                batch = sentences[index * bs:(index + 1) * bs]
                if len(batch) < bs:
                    break
                rec = measure(target, [t for t, _ in batch], [y or 0 for _, y in batch], index)
                rows.append({"data": data, "batch_size": bs, "index": index, **rec})
                cells.setdefault((data, bs), []).append(rec)
    print("| data | batch | n | tokens | one position | placed right | placed wrong | per position: left / layer 0 / true | truth allowed |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for (data, bs), recs in cells.items():
        mean = {k: sum(r[k] for r in recs) / len(recs) for k in recs[0] if k != "truth_allowed"}
        ok = sum(r["truth_allowed"] for r in recs)
        print(f"| {data} | {bs} | {len(recs)} | {mean['tokens']:.0f} | {mean['single_position']:.0f} | "
              f"{mean['placed_right']:.0f} | {sum(r['placed_wrong'] for r in recs)} | "
              f"{mean['candidates_per_position']:.1f} / {mean['layer0_per_position']:.1f} / "
              f"{mean['true_per_position']:.1f} | {ok}/{len(recs)} |")
        summary.append({"data": data, "batch_size": bs, "n": len(recs), "truth_allowed": ok, **mean})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "textleak": textleak.__version__,
                               "cells": summary, "batches": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
