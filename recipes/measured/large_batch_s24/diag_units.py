"""Scratch (#16, s24): one benchmark_text.py unit (capture, recover, score) with everything per sentence
kept: the predicted ids and texts, which passed the certificate, where each came from (found by the search,
inverted from its own state, a finish track), and the scorer's matching (reference index, exact). The
truth is read only to score.

    python recipes/measured/large_batch_s24/diag_units.py --data sst2 --budget 450 \
        --option targets=true --option finish=0.5 --option invert=9 --out DIR/sst2_on_units.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

import textleak
import textleak.attacks.beyond_rank as br
import textleak.attacks.beyond_rank_invert as inv
from textleak.attacks.base import parse_options
from textleak.data import read_sentences
from textleak.text.models import load_text_model

SEEN: dict = {"inverted": [], "found": [], "tracks": []}


def _patch() -> None:
    run0 = inv.StateInversion.run

    def run(self, *a, **k):
        out = run0(self, *a, **k)
        SEEN["inverted"] += [list(s) for _, s in out]
        return out
    inv.StateInversion.run = run
    fin0 = br.finished

    def finished(lengths, sequences, found, tracks):
        SEEN["found"] = [list(s) for s in found]
        SEEN["tracks"] = [list(s) for s in tracks]
        return fin0(lengths, sequences, found, tracks)
    br.finished = finished


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="sst2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--budget", type=float, default=450)
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["TEXTLEAK_BUDGET_CLOCK"] = "cpu"
    torch.set_num_threads(1)
    _patch()
    target = load_text_model(None, task="classify")
    rows = [(t, y or 0) for t, y in read_sentences(args.data)][:args.batch_size]
    cap = textleak.capture_gradients(target, [t for t, _ in rows], labels=[y for _, y in rows], seed=0)
    t0, c0, l0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    res = textleak.recover(gradients=cap.gradients, model=target, attack="beyond_rank", reference=cap.reference,
                           unknown=["labels"], options=parse_options(args.option), progress=False, budget=args.budget)
    tok = target.tokenizer
    pred = res.prediction
    ids = [list(map(int, s)) for s in pred["token_ids"]]
    ref_ids = cap.reference.token_ids or [tok(t)["input_ids"] for t in cap.reference.texts]
    ref_ids = [list(map(int, r)) for r in ref_ids]
    per = {e["prediction_index"]: e for e in res.metrics["per_example"]}
    cert = res.details.get("sentence_certified") or []
    units = []
    for i, s in enumerate(ids):
        e = per.get(i, {})
        src = [k for k in ("found", "inverted", "tracks") if s in SEEN[k]]
        units.append({"i": i, "ids": s, "text": pred["texts"][i], "certified": bool(cert[i]) if i < len(cert) else None,
                      "source": src, "in_batch": s in ref_ids, "copies_in_prediction": ids.count(s),
                      "reference_index": e.get("reference_index"), "exact": e.get("exact_match"),
                      "rouge1": e.get("rouge1")})
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"data": args.data, "options": args.option, "budget_cpu_s": args.budget,
           "wall_s": time.perf_counter() - t0, "cpu_s_recover": time.process_time() - c0,
           "cpu_s_process": ru.ru_utime + ru.ru_stime, "load_start": l0, "load_end": os.getloadavg()[0],
           "metrics": res.metrics["mean"], "certified_share": res.details.get("certified_share"),
           "finish": res.details.get("finish"), "found": len(SEEN["found"]), "inverted": len(SEEN["inverted"]),
           "units": units, "references": [{"ids": r, "text": t} for r, t in zip(ref_ids, cap.reference.texts)]}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    bad = [u for u in units if u["certified"] and not u["exact"]]
    print(json.dumps({k: out[k] for k in ("metrics", "certified_share", "wall_s", "cpu_s_process", "found",
                                         "inverted", "load_start", "load_end")}, default=str))
    for u in bad:
        print("CERTIFIED NOT EXACT:", json.dumps(u, default=str))


if __name__ == "__main__":
    main()
