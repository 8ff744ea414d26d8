"""Scratch (s23, ground truth): `guided.Guided` from k-wrong / random starts of the right length and random
starts one shorter / longer: exact share, end distances, forwards, CPU s."""
import sys, time, random, json, torch
sys.path.insert(0, "recipes/measured/large_batch_inv_s23")
from common import setup, states, random_seq
from guided import Guided
data = sys.argv[1]; count = int(sys.argv[2]); which = sys.argv[3].split(","); top = int(sys.argv[4])
full = len(sys.argv) <= 5 or sys.argv[5] != "nofull"
b = setup(data); rng = random.Random(0)
H = states(b, b.truth)
g = Guided(b, top)
idx = list(range(0, 64, max(1, 64 // count)))[:count]
out = {}
for w in which:
    c0 = time.process_time(); g.evals = 0; rows = []
    for i in idx:
        s = b.truth[i]; n = len(s)
        if w.startswith("k"):
            k = min(int(w[1:]), n - 2); st = list(s)
            for p in rng.sample(range(1, n - 1), k):
                st[p] = rng.choice([x for x in b.options[p] if x != s[p]])
        elif w == "rand":
            st = random_seq(b, n, rng)
        else:
            m = n - 1 if w == "short" else n + 1
            st = random_seq(b, m, rng)
        o, d = g.run([st], H[i:i + 1], full=full)
        rows.append({"i": i, "n": n, "dist": float(d[0]), "exact": o[0] == s,
                     "wrong": sum(x != y for x, y in zip(o[0], s)) if len(o[0]) == n else None})
    cpu = time.process_time() - c0
    print(f"{w} top{top} full={full}: exact {sum(r['exact'] for r in rows)}/{len(rows)} dists {[round(r['dist'], 4) for r in rows]} "
          f"wrong {[r['wrong'] for r in rows]} evals {g.evals} cpu {cpu:.0f}", flush=True)
    out[w] = {"rows": rows, "cpu_s": cpu, "evals": g.evals}
json.dump(out, open(f"recipes/measured/large_batch_inv_s23/truth_guided_{data}_{'_'.join(which)}_top{top}_{int(full)}.json", "w"), indent=1)
