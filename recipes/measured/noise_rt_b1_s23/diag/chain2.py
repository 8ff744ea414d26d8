"""Scratch (ground truth only scores), session 23: from each settled guess (stdin as spans.py), a
single-token coordinate ascent on J_w (then J) whose pool at each position is the top K by the
context sum (log p + z(matched) + 0.5 z(rows), evidence.context_candidates) from head H with masking M
(argv: H in old|new, M in alone|win3, K, sweeps): wrong tokens before and after, true changes."""
import os, sys, json, math
here = os.path.dirname(os.path.abspath(__file__))
for d in ("../../noise_rt_b1_s20/diag", "../../noise_rt_b1_s22/diag", "../../noise_rt_b1_s21/diag"):
    sys.path.insert(0, os.path.join(here, d))
import torch
from common import *  # noqa
from spans import wrong_runs, put, cpu
from textleak.attacks.evidence import row_scores, special_ids, context_candidates
from textleak.text.masked_prior import load_context_head

def climb(g, head, mode, K, sweeps, rows, banned, word, truth):
    true_ch = wrong_ch = 0
    for _ in range(sweeps):
        x = g.x; L = len(x)
        pos = list(range(1, L - 1))
        groups = [[p] if mode == "alone" else [q for q in (p - 1, p, p + 1) if 0 < q < L - 1] for p in pos]
        lps = head.log_probs(x, groups)
        changed = 0
        for p, gr, lp in zip(pos, groups, lps):
            cands = context_candidates(lp[gr.index(p)], g.T[word] @ g.e[p], rows[:, p], banned, K)
            old = g.x[p]
            if g.substitute(p, cands):
                changed += 1
                if g.x[p] == truth[p]: true_ch += 1
                elif old == truth[p]: wrong_ch += 1
        if not changed:
            break
    return true_ch, wrong_ch

def main():
    H, M, K, S = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    head = None
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
        c0 = cpu()
        t, cap, tok, truth, y = setup(data, i)
        if head is None:
            if H == "old":
                head = load_context_head(t)
            else:
                from modes import new_model
                head = new_model(t, "/tmp/s22/k6_big.pt")
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth):
            continue
        lay = layout_for(t.model); grads = cap.gradients.gradients; word = lay.word_embedding_name
        W, P = grads[word].double().cpu(), grads[lay.position_embedding_name].double().cpu()
        banned = special_ids(lay, tok); rows = row_scores(W, P, len(truth), banned)
        out = dict(label=f"{label} {data}{i}", H=H, M=M, K=K, wrong0=len(wrong_runs(seq, truth)[0]))
        g = guess_for(t, cap, seq, y, weighted=True)
        out["Jw_true"], out["Jw_wrongly"] = climb(g, head, M, K, S, rows, banned, word, truth)
        out["after_Jw"] = len(wrong_runs(g.x, truth)[0])
        g2 = guess_for(t, cap, g.x, y, weighted=False)
        out["J_true"], out["J_wrongly"] = climb(g2, head, M, K, S, rows, banned, word, truth)
        out["after_J"] = len(wrong_runs(g2.x, truth)[0])
        out["text"] = tok.decode(g2.x[1:-1]); out["cpu"] = round(cpu() - c0, 1)
        print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
