"""Median rank, top 8/32/100 of each column of ngram_ranks.jsonl, beside ../diag/ranks.txt's head and comb columns
(same positions, same order). Usage: python summary.py > ngram_summary.txt"""
import json, re, statistics, os
here = os.path.dirname(os.path.abspath(__file__))
rows = [json.loads(l) for l in open(os.path.join(here, "ngram_ranks.jsonl"))]
old = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(os.path.join(here, "../diag/ranks.txt")) if l.startswith("  p=")]
assert len(old) == len(rows) and all(int(o["p"]) == r["p"] and o["true"] == r["true"] for o, r in zip(old, rows)), (len(old), len(rows))
cols = {k: [int(o[k]) for o in old] for k in ("bigram", "head", "head_truectx", "head_run", "comb", "comb_run", "comb_truectx")}
for k in rows[0]:
    if k.split("_")[0] in ("bo", "c3bo", "lrbo", "interp", "comb", "left") and not k.startswith("nbr"):
        cols["ngram_" + k] = [r[k] for r in rows]
print(f"{len(rows)} wrong positions of 8 settled RT guesses; rank = tokens scored strictly above the true one (0 = top)")
print("source | median rank | top 8 | top 32 | top 100")
for k, v in cols.items():
    print(f"{k} | {statistics.median(v):g} | {sum(x < 8 for x in v)} | {sum(x < 32 for x in v)} | {sum(x < 100 for x in v)}")
seen = [r["seen_truectx"] for r in rows]
print(f"true context seen in training: 5-window {sum(s[0] > 0 for s in seen)}, 3-window {sum(s[1] > 0 for s in seen)}, one-sided trigram {sum(s[2] > 0 for s in seen)} of {len(rows)}")
seen = [r["seen_guess"] for r in rows]
print(f"guess context seen in training: 5-window {sum(s[0] > 0 for s in seen)}, 3-window {sum(s[1] > 0 for s in seen)}, one-sided trigram {sum(s[2] > 0 for s in seen)} of {len(rows)}")
print("\nby how many of the two neighbours the guess has right (guess context unless _truectx)")
print("neighbours right | n | source | median rank | top 8 | top 32")
for nb in (0, 1, 2):
    idx = [j for j, r in enumerate(rows) if r["nbr_right"] == nb]
    for k in ("head", "comb", "bigram", "ngram_comb_left_truectx", "ngram_bo_guess", "ngram_comb_interp_guess", "ngram_comb_headngram_guess", "ngram_bo_truectx", "ngram_comb_interp_truectx"):
        v = [cols[k][j] for j in idx]
        print(f"{nb} | {len(v)} | {k} | {statistics.median(v):g} | {sum(x < 8 for x in v)} | {sum(x < 32 for x in v)}")
