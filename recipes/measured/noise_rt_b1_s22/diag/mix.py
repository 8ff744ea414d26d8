"""Scratch: singles (the true token put in alone at a wrong position of a settled guess) that raise
J + lam * PLL and J_w + lam * PLL (dJ, dJ_w from ranks.py's output argv[1]; dPLL from pll.py's argv[2])."""
import json, sys
rk = {}
for ln in open(sys.argv[1]):
    r = json.loads(ln)
    for row in r["rows"]:
        rk[(r["label"], str(r["i"]), row["p"])] = (row["dJ"], row["dJw"])
pl = json.load(open(sys.argv[2]))
for name, rows in pl.items():
    trip = [(rk[(lab, i, p)], d) for lab, i, g, tr, ups, n, wrong, deltas in rows for p, d in zip(wrong, deltas)]
    gaps = [tr - g for lab, i, g, tr, *_ in rows]
    for lam in (0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        uj = sum(dj + lam * d > 0 for (dj, dw), d in trip); uw = sum(dw + lam * d > 0 for (dj, dw), d in trip)
        print(f"{name} lam {lam:g}: singles raising J+lam*PLL {uj}/{len(trip)}, J_w+lam*PLL {uw}/{len(trip)}; PLL gap truth-guess per guess {[round(x, 1) for x in gaps]}")
