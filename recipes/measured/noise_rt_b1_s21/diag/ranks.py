"""Scratch (ground truth): for each settled guess (same length as the truth), at each wrong position,
the true token's rank under each candidate source, and whether setting it alone raises J / J_w."""
import sys, json, time, math
import torch
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../noise_rt_b1_s20/diag"))
from common import *
from textleak.attacks.evidence import row_scores, special_ids, zscores, context_candidates, PriorCandidates
from textleak.attacks.flips import flip_gains
from textleak.attacks.layer_weights import name_weights
from textleak.text.masked_prior import load_context_head
from textleak.text.prior import load_prior

def rank(score, t):
    return int((score > score[t]).sum())

_cache = {}
def ctx(data, i):
    if (data, i) not in _cache:
        t, cap, tok, truth, y = setup(data, i)
        lay = layout_for(t.model)
        grads = cap.gradients.gradients
        W, P = grads[lay.word_embedding_name].double().cpu(), grads[lay.position_embedding_name].double().cpu()
        banned = special_ids(lay, tok)
        rs = row_scores(W, P, len(truth), banned)
        head = load_context_head(t)
        prior = PriorCandidates(load_prior("bigram", tok), int(banned.shape[0]), banned)
        _cache[(data, i)] = (t, cap, tok, truth, y, lay, banned, rs, head, prior)
    return _cache[(data, i)]

def analyse(data, i, text, label):
    t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
    seq = tok(text)["input_ids"]
    L = len(truth)
    if len(seq) != L:
        print(f"## {label}: len {len(seq)} != {L}, skip"); return None
    word = lay.word_embedding_name
    g = guess_for(t, cap, seq, y)
    gw = guess_for(t, cap, seq, y, weighted=True)
    Jt, = J(g, [truth]); Jwt, = J(gw, [truth])
    wrong = [p for p in range(1, L - 1) if seq[p] != truth[p]]
    print(f"## {label}: J gap {Jt - g.best:+.4f}  Jw gap {Jwt - gw.best:+.4f}  wrong {len(wrong)}")
    gain = flip_gains(lay, g.T, seq, y, None, None)
    gainw = flip_gains(lay, gw.T, seq, y, None, name_weights(lay, gw.weights))
    single = [list(seq) for _ in wrong]
    for s, p in zip(single, wrong):
        s[p] = truth[p]
    dJ = [j - g.best for j in J(g, single)] if wrong else []
    dJw = [j - gw.best for j in J(gw, single)] if wrong else []
    # masked head: p alone; the wrong run containing p masked (oracle stretch); the 3-window of least support masked
    alone = head.log_probs(seq, [[p] for p in wrong])
    runs_ = []
    for p in wrong:
        a = p
        while a - 1 in wrong: a -= 1
        b = p
        while b + 1 in wrong: b += 1
        runs_.append(list(range(a, b + 1)))
    stretch = head.log_probs(seq, runs_)
    truectx = head.log_probs(truth, [[p] for p in wrong])
    betw = [prior._at(seq, p, True, torch.zeros_like(prior.uni)) for p in wrong]
    rows = []
    for k, p in enumerate(wrong):
        tt = truth[p]
        matched = g.T[word] @ g.e[p]
        m_z = zscores(matched.cpu(), banned)
        lp_alone = alone[k][0]
        lp_str = stretch[k][runs_[k].index(p)]
        lp_true = truectx[k][0]
        r_z = zscores(rs[:, p], banned)
        comb = lp_alone.double() + m_z + 0.5 * r_z
        comb_str = lp_str.double() + m_z + 0.5 * r_z
        comb_true = lp_true.double() + m_z + 0.5 * r_z
        row = dict(p=p, guess=tok.convert_ids_to_tokens([seq[p]])[0], true=tok.convert_ids_to_tokens([tt])[0],
                   rows=rank(rs[:, p], tt), matched=rank(matched.cpu(), tt), flipJ=rank(gain[p].cpu(), tt),
                   flipJw=rank(gainw[p].cpu(), tt), head=rank(lp_alone, tt), head_run=rank(lp_str, tt),
                   head_truectx=rank(lp_true, tt), bigram=rank(betw[k], tt), comb=rank(comb, tt),
                   comb_run=rank(comb_str, tt), comb_truectx=rank(comb_true, tt), dJ=dJ[k], dJw=dJw[k])
        rows.append(row)
        print("  " + " ".join(f"{k_}={v:+.4f}" if isinstance(v, float) else f"{k_}={v}" for k_, v in row.items()))
    return dict(label=label, data=data, i=i, text=text, Jgap=Jt - g.best, Jwgap=Jwt - gw.best, rows=rows)

if __name__ == "__main__":
    out = open(sys.argv[1], "a")
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        c0 = time.process_time()
        r = analyse(data, int(i), text, label)
        print(f"  ({time.process_time() - c0:.0f} CPU s)", flush=True)
        if r: out.write(json.dumps(r) + "\n"); out.flush()
