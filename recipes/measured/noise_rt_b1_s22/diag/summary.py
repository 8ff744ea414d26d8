"""Scratch: median / top-4/32/100 of the ranks in a ranks_mlm.py output."""
import json, sys, statistics
rows = [r for ln in open(sys.argv[1]) for r in json.loads(ln)["rows"]]
print(f"{len(rows)} wrong positions")
print("source | median rank | top 4 | top 32 | top 100")
for k in ["bigram", "head", "head_run", "head_truectx", "comb", "comb_run", "comb_truectx"]:
    v = [r[k] for r in rows]
    print(f"{k} | {statistics.median(v):g} | {sum(x < 4 for x in v)} | {sum(x < 32 for x in v)} | {sum(x < 100 for x in v)}")
