"""Scratch (ground truth only scores), session 23: would span proposals reach the true wrong runs?
For each settled guess (stdin as spans.py) and each wrong run [a, b] (the oracle's location), a
left-to-right beam over the run's slots whose partial hypotheses are ranked by the MASKED LM +
gradient evidence (slot p masked with p..b, earlier slots filled by the beam: log p + z(matched from
the guess) + 0.5 z(rows), as evidence.context_candidates) instead of J; the finished spans are then
scored by J once. Reports per run: the true span's rank in the final beam (by LM score and by J),
the tokens right in the J-best proposal, and whether it raises J. Heads: argv[1] in
{old, new} (old: the cached s16 head; new: the s22 K=6 big fine-tuned MLM at /tmp/s22/k6_big.pt)."""
import os, sys, json, math, resource
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s20/diag"))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s22/diag"))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag"))
import torch
from common import *  # noqa
from spans import wrong_runs, put, cpu
from textleak.attacks.evidence import row_scores, special_ids, zscores
from textleak.text.masked_prior import load_context_head

BEAM, PER = int(os.environ.get("BEAM", 16)), int(os.environ.get("PER", 8))

def propose(head, g, seq, a, b, rows, banned, word):
    beams = [(0.0, list(seq))]
    for p in range(a, b + 1):
        lps = head.log_probs(beams[0][1], [[]])  # warm
        groups = [list(range(p, b + 1))] * len(beams)
        x = []
        for sc, s in beams:
            lp = head.log_probs(s, [list(range(p, b + 1))])[0][0]
            score = lp.double() + zscores((g.T[word] @ g.e[p]).cpu(), banned) + 0.5 * zscores(rows[:, p], banned)
            top = torch.topk(score.masked_fill(banned.cpu(), -math.inf), PER)
            for v, t in zip(top.values.tolist(), top.indices.tolist()):
                s2 = list(s); s2[p] = t; x.append((sc + v, s2))
        x.sort(key=lambda r: -r[0])
        beams = x[:BEAM]
    return beams

def main():
    which = sys.argv[1]
    head = None
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
        c0 = cpu()
        t, cap, tok, truth, y = setup(data, i)
        if head is None:
            if which == "old":
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
        g = guess_for(t, cap, seq, y)
        wrong, runs = wrong_runs(seq, truth)
        res = []
        for r in runs:
            a, b = r[0], r[-1]
            beams = propose(head, g, seq, a, b, rows, banned, word)
            js = J(g, [s for _, s in beams])
            tspan = truth[a:b + 1]
            lm_rank = next((k for k, (_, s) in enumerate(beams) if s[a:b + 1] == tspan), None)
            order = sorted(range(len(js)), key=lambda k: -js[k])
            best = beams[order[0]][1]
            jt = J(g, [put(seq, truth, r)])[0]
            res.append(dict(at=[a, b], truth=tok.decode(tspan), best=tok.decode(best[a:b + 1]),
                            true_in_beam=lm_rank, true_J_rank=None if lm_rank is None else order.index(lm_rank),
                            best_right=sum(best[p] == truth[p] for p in range(a, b + 1)), width=b - a + 1,
                            best_dJ=round(js[order[0]] - g.best, 5), true_dJ=round(jt - g.best, 5),
                            guess_right=0))
        print(json.dumps(dict(label=f"{label} {data}{i}", head=which, runs=res, cpu=round(cpu() - c0, 1))), flush=True)

if __name__ == "__main__":
    main()
