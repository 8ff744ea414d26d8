"""Scratch (#16, s25): `diag_units.py` plus the finish's insides, kept for a truth comparison afterwards: the
pooled states read, the tracks as assembled and as descended, the Hungarian pairing (track -> state, its
distance before and after the descent). The truth is read only afterwards (`diag_truth.py`).

    python recipes/measured/large_batch_s25/diag_finish.py --data cola --budget 450 --out DIR/cola_finish
        (writes DIR/cola_finish.json and DIR/cola_finish.pt)
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
import textleak.attacks.beyond_rank_targets as tg
from textleak.attacks.base import parse_options
from textleak.data import read_sentences
from textleak.text.models import load_text_model

SEEN: dict = {"found": [], "tracks": [], "assembled": [], "pairs": [], "targets": None, "states": None,
              "descent_start": None, "descent_end": None}


def _patch() -> None:
    fin0 = br.finished

    def finished(lengths, sequences, found, tracks):
        SEEN["found"] = [list(s) for s in found]
        SEEN["tracks"] = [list(s) for s in tracks]
        return fin0(lengths, sequences, found, tracks)
    br.finished = finished
    ps0 = tg.pooled_states

    def pooled_states(*a, **k):
        got = ps0(*a, **k)
        SEEN["states"] = None if got is None else got.states.clone()
        return got
    tg.pooled_states = pooled_states
    lsa0 = tg.linear_sum_assignment

    def lsa(m):
        r, c = lsa0(m)
        SEEN["pairs"] = [(int(a), int(b), float(m[a, b])) for a, b in zip(r, c)]
        return r, c
    tg.linear_sum_assignment = lsa
    unf0 = tg.TargetDescent._unfound

    def unfound(self, states, found):
        t = unf0(self, states, found)
        SEEN["targets"] = t.clone()
        return t
    tg.TargetDescent._unfound = unfound
    run0 = tg.TargetDescent.run

    def run(self, tracks, found, allowed):
        SEEN["assembled"] = [list(t) for t in tracks]
        out = run0(self, tracks, found, allowed)
        SEEN["descended"] = [list(t) for t in out]
        return out
    tg.TargetDescent.run = run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="cola")
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
    ids = [list(map(int, s)) for s in res.prediction["token_ids"]]
    ref_ids = cap.reference.token_ids or [tok(t)["input_ids"] for t in cap.reference.texts]
    ref_ids = [list(map(int, r)) for r in ref_ids]
    per = {e["prediction_index"]: e for e in res.metrics["per_example"]}
    cert = res.details.get("sentence_certified") or []
    units = [{"i": i, "ids": s, "text": res.prediction["texts"][i], "certified": bool(cert[i]) if i < len(cert) else None,
              "source": [k for k in ("found", "tracks") if s in SEEN[k]], "in_batch": s in ref_ids,
              "reference_index": per.get(i, {}).get("reference_index"), "exact": per.get(i, {}).get("exact_match"),
              "rouge1": per.get(i, {}).get("rouge1")} for i, s in enumerate(ids)]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"data": args.data, "options": args.option, "budget_cpu_s": args.budget,
           "wall_s": time.perf_counter() - t0, "cpu_s_recover": time.process_time() - c0,
           "cpu_s_process": ru.ru_utime + ru.ru_stime, "load_start": l0, "load_end": os.getloadavg()[0],
           "metrics": res.metrics["mean"], "certified_share": res.details.get("certified_share"),
           "finish": res.details.get("finish"), "found": SEEN["found"], "assembled": SEEN["assembled"],
           "descended": SEEN.get("descended"), "tracks": SEEN["tracks"], "pairs": SEEN["pairs"], "units": units,
           "references": [{"ids": r, "text": t} for r, t in zip(ref_ids, cap.reference.texts)]}
    with open(args.out + ".json", "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    torch.save({"states": SEEN["states"], "targets": SEEN["targets"]}, args.out + ".pt")
    print(json.dumps({k: out[k] for k in ("metrics", "certified_share", "wall_s", "cpu_s_process",
                                         "load_start", "load_end", "finish")}, default=str))


if __name__ == "__main__":
    main()
