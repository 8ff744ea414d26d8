"""Diagnosis of the `likelihood` search on one noisy batch-1 sentence (issue #15): where its guess
differs from the truth and why. It compares with the ground truth, so it is a diagnosis, never
part of an attack.

    python recipes/likelihood_diagnose.py --data rt --index 0 --budget 300 --out results/diag_rt0.json
    python recipes/likelihood_diagnose.py --data rt --index 0 --guess results/diag_rt0.json  # diagnose only

Captures the gradient as `recipes/fl_defences.py` does (seed = index, labels withheld), runs
`likelihood` (bigram prior, as `auto` passes it; `--option KEY=VALUE` for its settings) under a
wall-time budget, records wall and CPU seconds, then prints: J and J_w of the truth and of the
guess; per differing position the true and guessed tokens, whether the row evidence was
confident, the true token's rank by row score and by first-order gain (J and J_w, from the
guess), and the change of J (and J_w) from putting the true token there alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import textleak
from textleak.attacks.base import parse_options
from textleak.attacks.evidence import confident, row_scores, special_ids
from textleak.attacks.flips import flip_gains
from textleak.attacks.layer_weights import name_weights
from textleak.attacks.likelihood_state import _Batch, _Guess
from textleak.data import read_sentences
from textleak.text.layouts import layout_for
from textleak.text.leaks import noise_level
from textleak.text.models import load_text_model
from textleak.threat import Observation


def diagnose(obs: Observation, target, truth: list[int], guess: list[int], label: int) -> dict:
    tok, layout = target.tokenizer, layout_for(target.model)
    grads = obs.gradients
    W = grads[layout.word_embedding_name].double().cpu()
    P = grads[layout.position_embedding_name].double().cpu()
    banned = special_ids(layout, tok)
    L = len(truth)
    scores = row_scores(W, P, L, banned)
    level = noise_level(layout, grads, L)
    sure = confident(scores, W, P, level.sigma).tolist()
    out = {}
    for weighted in (False, True):
        b = _Batch(layout, grads, [guess], [label])
        g = _Guess(b, 0, weighted)
        Jt = float(g.score([truth])[0][0])
        gains = flip_gains(layout, g.T, guess, label, None, name_weights(layout, g.weights) if weighted else None)
        fixes = []
        for p in range(L):
            if truth[p] != guess[p]:
                t = list(guess)
                t[p] = truth[p]
                fixes.append(t)
        dJ = (g.score(fixes)[0] - g.best).tolist() if fixes else []
        rows, k = [], 0
        for p in range(L):
            if truth[p] == guess[p]:
                continue
            name = tok.convert_ids_to_tokens
            rows.append({"p": p, "true": name(truth[p]), "guess": name(guess[p]),
                         "sure": bool(sure[p]), "row_rank": int((scores[:, p] > scores[truth[p], p]).sum()),
                         "fo_rank": int((gains[p] > gains[p, truth[p]]).sum()), "dJ": round(dJ[k], 4)})
            k += 1
        out["Jw" if weighted else "J"] = {"truth": Jt, "guess": g.best, "positions": rows}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="rt")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--noise", default="1e-6")
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--guess", help="a JSON this script wrote: diagnose its guess, no search")
    ap.add_argument("--start", help="a JSON this script wrote: the search starts from its guess")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    target = load_text_model(None, task="classify")
    rows = [(t, y or 0) for t, y in read_sentences(args.data)]
    text, label = rows[args.index]
    cap = textleak.capture_gradients(target, [text], labels=[label], seed=args.index, defence=f"noise:{args.noise}")
    record = {"data": args.data, "index": args.index, "text": text}
    if args.guess:
        record.update(json.loads(Path(args.guess).read_text()))
    else:
        options = {"prior": "bigram", **parse_options(args.option)}
        start = {"initial_ids": [json.loads(Path(args.start).read_text())["guess"]]} if args.start else {}
        t0, c0 = time.perf_counter(), time.process_time()
        res = textleak.recover(gradients=cap.gradients, model=target, attack="likelihood", reference=cap.reference,
                               unknown=["labels"], options={**options, **start}, progress=False, budget=args.budget)
        record.update(options=options, wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
                      guess=res.prediction["token_ids"][0], guess_label=res.prediction["labels"][0],
                      recovered=res.texts[0], rouge1=res.metrics["mean"]["rouge1"], steps=res.details.get("steps"))
        print(f"rouge1 {record['rouge1']:.3f} wall {record['wall']:.0f} cpu {record['cpu']:.0f}: {record['recovered']}")
        for s in record["steps"] or []:
            print("  ", s[:5], s[5])
    obs = Observation.from_file(cap.gradients, unknown=["labels"])
    truth = target.tokenizer(text)["input_ids"]
    record["diagnosis"] = diagnose(obs, target, truth, record["guess"], record["guess_label"])
    print("truth:", text)
    for key, d in record["diagnosis"].items():
        print(f"{key}: truth {d['truth']:.4f} guess {d['guess']:.4f}")
        for r in d["positions"]:
            print("   ", r)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
