"""Scratch (#16, s25): reads `diag_finish.py`'s record against the truth (the truth is read here only).

Per true sentence: found (certified) or not, its pooled state (nearest, relative distance), whether a track was
paired with that state, the paired track's length against the truth's, the unigram F1 (ids, no specials) of the
best prediction, and whether any track stands near it. Per track: its paired state's sentence, the length match,
its end distance against the truth's own distance to that state (search vs model failure), and whether it is a
near copy (F1 >= 0.6) of a found sentence (a wasted track).

    python recipes/measured/large_batch_s25/diag_truth.py recipes/measured/large_batch_s25/diag_cola_finish
"""
from __future__ import annotations

import json
import sys
from collections import Counter

import torch

from textleak.attacks.beyond_rank_targets import cls_states
from textleak.text.layouts import layout_for
from textleak.text.models import load_text_model


def f1(a, b) -> float:
    a, b = Counter(a[1:-1]), Counter(b[1:-1])
    hit = sum((a & b).values())
    return 0.0 if not hit else 2 * hit / (sum(a.values()) + sum(b.values()))


def main(stem: str) -> None:
    rec = json.load(open(stem + ".json"))
    pt = torch.load(stem + ".pt")
    layout = layout_for(load_text_model(None, task="classify").model)
    refs = [r["ids"] for r in rec["references"]]
    found, tracks, asm = rec["found"], rec["descended"] or rec["tracks"], rec["assembled"]
    T = cls_states(layout, refs)
    rel = lambda A, B: torch.cdist(A, B) / B.norm(dim=1)[None]  # noqa: E731
    S, tg = pt["states"], pt["targets"]
    d_sr = rel(T, S)  # truth x states
    print(f"states {len(S)}; each truth's nearest state: max rel {float(d_sr.min(1)[0].max()):.2e}")
    tgt_truth = [int(rel(T, tg)[:, c].argmin()) for c in range(len(tg))] if tg is not None else []
    found_ref = {i for i, r in enumerate(refs) if r in found}
    print(f"found {len(found)} (in batch {len(found_ref)}); targets {len(tgt_truth)}; tracks {len(tracks)}")
    Dt = rel(cls_states(layout, tracks), tg) if tracks else None
    pair_of = {}
    same_len = 0
    rows = []
    for r, c, d0 in rec["pairs"]:
        j = tgt_truth[c]
        pair_of[j] = r
        tr = tracks[r]
        ok = len(tr) == len(refs[j])
        same_len += ok
        near_found = max((f1(tr, f) for f in found), default=0)
        rows.append((r, j, len(tr), len(refs[j]), d0, float(Dt[r, c]), float(rel(T[j:j + 1], tg[c:c + 1])),
                     f1(asm[r], refs[j]), f1(tr, refs[j]), max(f1(tr, x) for x in refs), near_found))
    print(f"pairs {len(rows)}: same length as the paired state's sentence {same_len}")
    print(" r  truth  len(tr) len(truth)  d_start  d_end  d_truth  F1asm>paired F1end>paired F1best_any nearfound")
    for x in rows:
        print(f"{x[0]:3d} {x[1]:3d} {x[2]:4d} {x[3]:4d}  {x[4]:.3f} {x[5]:.3f} {x[6]:.1e}  {x[7]:.2f} {x[8]:.2f} "
              f"{x[9]:.2f} {x[10]:.2f}")
    wasted = [x for x in rows if x[10] >= 0.6]
    print(f"wasted (F1 >= 0.6 with a found sentence): {len(wasted)}")
    preds = [u["ids"] for u in rec["units"]]
    best = [max(f1(p, r) for p in preds) for r in refs]
    best_tr = [max((f1(t, r) for t in tracks), default=0) for r in refs]
    miss = [i for i in range(len(refs)) if i not in found_ref]
    print(f"unfound truths {len(miss)}: best prediction F1 bins", Counter(round(best[i], 1) for i in miss))
    print("unfound truths with no track at F1 >= 0.3:", sum(best_tr[i] < 0.3 for i in miss),
          "; >= 0.5:", sum(best_tr[i] >= 0.5 for i in miss), "; >= 0.8:", sum(best_tr[i] >= 0.8 for i in miss))
    print("unfound truths paired with a track of their own length:",
          sum(1 for i in miss if i in pair_of and len(tracks[pair_of[i]]) == len(refs[i])))
    print("lengths of unfound truths:", sorted(len(refs[i]) for i in miss))
    print("lengths of found:", sorted(len(f) for f in found))


if __name__ == "__main__":
    main(sys.argv[1])
