"""Scratch (ground truth), session 24: the greedy oracle path on J_w (weights at the guess) whose moves set
1 or 2 adjacent wrong positions to the truth (best J_w-raising first, as s23's blocks.py with K=2); for each
move taken, the context-score ranks (slot masked alone in the path's current sequence, matched filter from
it) of its true tokens, and the rank of the pair among top-64 x top-64 by the sum of the single J_w changes."""
import os, sys, json
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag"))
from ranks import *  # noqa
from textleak.attacks.evidence import zscores

def ctxrank(g, seq, p, t, head, rs, banned, word):
    e = g.score([seq])[1].e[0]
    lp = head.log_probs(seq, [[p]])[0][0]
    s = lp.double().cpu() + zscores((g.T[word] @ e[p]).cpu(), banned) + 0.5 * zscores(rs[:, p].cpu(), banned)
    s = s.masked_fill(banned.cpu(), -math.inf)
    return int((s > s[t]).sum())

def pairrank(g, seq, a, truth, head, rs, banned, word, best, K=64):
    b = a + 1
    e = g.score([seq])[1].e[0]
    lps = head.log_probs(seq, [[a], [b]])
    lists, deltas = [], []
    for p, lp in zip((a, b), lps):
        c = context_candidates(lp[0], g.T[word] @ e[p], rs[:, p], banned, K)
        if truth[p] not in c:
            return None
        trials = [seq[:p] + [v] + seq[p + 1:] for v in c]
        d = [j - best for j in J(g, trials)]
        lists.append(c); deltas.append(d)
    da = deltas[0][lists[0].index(truth[a])]; db = deltas[1][lists[1].index(truth[b])]
    allsums = sorted((x + y for x in deltas[0] for y in deltas[1]), reverse=True)
    return sum(1 for s in allsums if s > da + db)

for line in sys.stdin:
    label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
    t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
    seq = tok(text)["input_ids"]
    if len(seq) != len(truth): continue
    word = lay.word_embedding_name
    g = guess_for(t, cap, seq, y, weighted=True)
    cur, best = list(seq), J(g, [seq])[0]
    steps = []
    while True:
        wrong = [p for p in range(1, len(cur) - 1) if cur[p] != truth[p]]
        blocks = [[p] for p in wrong] + [[p, p + 1] for p in wrong if p + 1 in wrong]
        if not blocks: break
        trials = [[truth[q] if q in blk else c for q, c in enumerate(cur)] for blk in blocks]
        js = J(g, trials)
        k = max(range(len(js)), key=lambda k: js[k])
        if js[k] <= best: break
        blk = blocks[k]
        r = [ctxrank(g, cur, p, truth[p], head, rs, banned, word) for p in blk]
        pr = pairrank(g, cur, blk[0], truth, head, rs, banned, word, best) if len(blk) == 2 else None
        steps.append(dict(at=blk, tok=tok.convert_ids_to_tokens([truth[p] for p in blk]), ctx=r, pair=pr,
                          dJw=round(js[k] - best, 4)))
        cur, best = trials[k], js[k]
    print(json.dumps(dict(label=label, i=i, wrong_left=len([p for p in range(1, len(cur) - 1) if cur[p] != truth[p]]),
                          steps=steps)), flush=True)
