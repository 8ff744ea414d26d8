"""Scratch (ground truth): from a settled guess, coordinate ascent whose pool is only the top-K context
candidates per position (recomputed each sweep), on J_w then J (as the search's two climbs): where it ends."""
import sys, json, time
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ranks import *

def climb(t, cap, seq, y, truth, head, rs, banned, word, K, weighted, tok, max_sweeps=6):
    g = guess_for(t, cap, seq, y, weighted)
    for sweep in range(max_sweeps):
        inner = list(range(1, len(seq) - 1))
        logp = head.log_probs(g.x, [[p] for p in inner])
        cands = {p: context_candidates(lp[0], g.T[word] @ g.e[p], rs[:, p], banned, K) for p, lp in zip(inner, logp)}
        changed = []
        for p in inner:
            before = g.x[p]
            if g.substitute(p, cands[p]):
                changed.append((p, tok.convert_ids_to_tokens([before])[0], tok.convert_ids_to_tokens([g.x[p]])[0], g.x[p] == truth[p]))
        ham = sum(a != b for a, b in zip(g.x, truth))
        print(f"   {'Jw' if weighted else 'J '} K={K} sweep {sweep}: changed {changed} wrong {ham}", flush=True)
        if not changed:
            break
    return g.x

if __name__ == "__main__":
    K = int(sys.argv[1])
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, int(i))
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth): continue
        c0 = time.process_time()
        print(f"## {label} {data} {i} wrong {sum(a != b for a, b in zip(seq, truth))}")
        x = climb(t, cap, seq, y, truth, head, rs, banned, lay.word_embedding_name, K, True, tok)
        x = climb(t, cap, x, y, truth, head, rs, banned, lay.word_embedding_name, K, False, tok)
        print(f"   -> {tok.decode(x[1:-1])}  ({time.process_time() - c0:.0f} CPU s)", flush=True)
