"""Scratch (ground truth): from each settled guess, every position's top-K tokens by the context score
(head log p with p masked + z(matched) + 0.5 z(rows), `evidence.context_candidates`) scored on J:
which positions have a J-raising candidate, at what rank, and is it the true token."""
import sys, json, time
import torch
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ranks import *

K = int(sys.argv[2]) if len(sys.argv) > 2 else 64

def deep(data, i, text, label):
    t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
    seq = tok(text)["input_ids"]
    L = len(truth)
    if len(seq) != L:
        return None
    word = lay.word_embedding_name
    g = guess_for(t, cap, seq, y)
    inner = list(range(1, L - 1))
    logp = head.log_probs(seq, [[p] for p in inner])
    out = []
    for p, lp in zip(inner, logp):
        cand = context_candidates(lp[0], g.T[word] @ g.e[p], rs[:, p], banned, K + 1)
        cand = [c for c in cand if c != seq[p]][:K]
        trials = []
        for c in cand:
            s = list(seq); s[p] = c; trials.append(s)
        dj = [j - g.best for j in J(g, trials)]
        up = [(k, c, d) for k, (c, d) in enumerate(zip(cand, dj)) if d > 0]
        tr = cand.index(truth[p]) if truth[p] in cand else None
        out.append(dict(p=p, wrong=seq[p] != truth[p], true_rank=tr, true_dJ=dj[tr] if tr is not None else None,
                        up=[(k, tok.convert_ids_to_tokens([c])[0], round(d, 5), c == truth[p]) for k, c, d in up]))
    return dict(label=label, i=i, L=L, out=out)

if __name__ == "__main__":
    fo = open(sys.argv[1], "a")
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        c0 = time.process_time()
        r = deep(data, int(i), text, label)
        if r is None: continue
        print(f"## {label} rt {i} ({time.process_time() - c0:.0f} CPU s)")
        for o in r["out"]:
            if o["up"] or o["wrong"]:
                print(f"  p={o['p']} wrong={o['wrong']} true_rank={o['true_rank']} true_dJ={o['true_dJ']} up={o['up'][:6]}")
        fo.write(json.dumps(r) + "\n"); fo.flush()
