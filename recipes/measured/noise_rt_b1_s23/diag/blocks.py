"""Scratch (ground truth), session 23: how wide must a move be? From each settled guess, a greedy
oracle path whose moves set a contiguous block of at most K wrong positions to the truth (blocks
inside wrong runs, any start), the best J-raising block first, until none raises J (J, then J_w).
Reports the wrong positions left per K."""
import os, sys, json
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s20/diag"))
from common import *  # noqa
from spans import wrong_runs, put, cpu

def path(g, seq, truth, K):
    cur, best = list(seq), J(g, [seq])[0]
    while True:
        wrong = [p for p in range(1, len(cur) - 1) if cur[p] != truth[p]]
        blocks = []
        for p in wrong:
            for k in range(1, K + 1):
                blk = list(range(p, p + k))
                if all(q in wrong for q in blk):
                    blocks.append(blk)
        if not blocks:
            return 0
        trials = [put(cur, truth, b) for b in blocks]
        js = J(g, trials)
        k = max(range(len(js)), key=lambda k: js[k])
        if js[k] <= best:
            return len(wrong)
        cur, best = trials[k], js[k]

def main():
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
        c0 = cpu()
        t, cap, tok, truth, y = setup(data, i)
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth):
            continue
        out = dict(label=f"{label} {data}{i}", wrong=len(wrong_runs(seq, truth)[0]))
        for name, w in (("J", False), ("Jw", True)):
            g = guess_for(t, cap, seq, y, weighted=w)
            out[name] = {K: path(g, seq, truth, K) for K in (1, 2, 3, 4)}
        out["cpu"] = round(cpu() - c0, 1)
        print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
