"""Scratch (ground truth), session 24: at each wrong adjacent pair (a, b) of each settled guess (stdin
as blockset.py), the rank of the true token at one slot by several scores, unconditional (the guess) and
conditional (the partner slot set to its true token; the matched filter and first-order gain then from
that hypothesis): ctx = context score (head log p, slot masked alone, + z(matched) + 0.5 z(rows)),
mt = matched filter alone, fo = first-order J_w gain (`flips.flip_gains`), jm = joint mask of both slots."""
import os, sys, json
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag"))
from ranks import *  # noqa
from textleak.attacks.flips import flip_gains
from textleak.attacks.layer_weights import name_weights
from textleak.attacks.evidence import zscores

def rk(score, t, banned):
    s = score.double().cpu().masked_fill(banned.cpu(), -math.inf)
    return int((s > s[t]).sum())

def ranks_at(g, seq, p, truth, head, rs, banned, word, lay, y, joint=None):
    e = g.score([seq])[1].e[0]
    lp = head.log_probs(seq, [[p]])[0][0]
    m = g.T[word] @ e[p]
    ctx_s = lp.double().cpu() + zscores(m.cpu(), banned) + 0.5 * zscores(rs[:, p].cpu(), banned)
    fo = flip_gains(lay, g.T, seq, y, None, name_weights(lay, g.weights))[p]
    out = dict(ctx=rk(ctx_s, truth[p], banned), mt=rk(m, truth[p], banned), fo=rk(fo, truth[p], banned))
    if joint is not None:
        lpj = head.log_probs(seq, [sorted(joint)])[0]
        j = sorted(joint).index(p)
        out["jm"] = rk(lpj[j].double().cpu() + zscores(m.cpu(), banned) + 0.5 * zscores(rs[:, p].cpu(), banned), truth[p], banned)
    return out

for line in sys.stdin:
    label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
    t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
    seq = tok(text)["input_ids"]
    if len(seq) != len(truth): continue
    word = lay.word_embedding_name
    g = guess_for(t, cap, seq, y, weighted=True)
    L = len(seq)
    for a in range(1, L - 2):
        b = a + 1
        if seq[a] == truth[a] or seq[b] == truth[b]: continue
        row = dict(label=label, i=i, a=a, true=tok.convert_ids_to_tokens([truth[a], truth[b]]))
        for first, second in ((a, b), (b, a)):
            row[f"u{second}"] = ranks_at(g, seq, second, truth, head, rs, banned, word, lay, y, joint=(a, b))
            put = list(seq); put[first] = truth[first]
            row[f"c{second}"] = ranks_at(g, put, second, truth, head, rs, banned, word, lay, y)
        print(json.dumps(row), flush=True)
