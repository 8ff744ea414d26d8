"""Scratch (s25): where a batch's ROUGE-1 is lost, from a fl_defences unit's recovered texts and the
references (re-tokenised with the MiniLM tokenizer; a sentence whose re-tokenised length differs from
its reference's is flagged). Each true inner token (no [CLS]/[SEP]) is one of: right (its sentence, its
position), order (its sentence, another position), owner (another sentence at its position), elsewhere
(another sentence, another position), missing (in no predicted sentence). Also the strong-row share.
usage: python diag_loss.py UNITS.jsonl [more...]"""
import json, sys
from textleak.text.models import load_text_model

tok = load_text_model(None, task="classify").tokenizer
for path in sys.argv[1:]:
    for line in open(path):
        u = json.loads(line)
        refs = [tok(t)["input_ids"][1:-1] for t in u["references"]]
        preds = [tok(t)["input_ids"][1:-1] for t in u["recovered"]]
        counts = dict(right=0, order=0, owner=0, elsewhere=0, missing=0)
        for i, r in enumerate(refs):
            for p, v in enumerate(r):
                if p < len(preds[i]) and preds[i][p] == v:
                    k = "right"
                elif v in preds[i]:
                    k = "order"
                elif any(j != i and p < len(s) and s[p] == v for j, s in enumerate(preds)):
                    k = "owner"
                elif any(v in s for s in preds):
                    k = "elsewhere"
                else:
                    k = "missing"
                counts[k] += 1
        n = sum(counts.values())
        lens = [(len(r), len(s)) for r, s in zip(refs, preds)]
        print(f"{u['key']} {u['method']} R1 {u['rouge1']:.3f} cpu {u['cpu_seconds']:.0f} load {u.get('load', 0):.1f} "
              f"tokens {n}: " + " ".join(f"{k} {v} ({v / n:.0%})" for k, v in counts.items()),
              "" if all(a == b for a, b in lens) else f"lengths differ {lens}")
        for r, s in zip(u["references"], u["recovered"]):
            print(f"   {r!r:60s} -> {s!r}")
