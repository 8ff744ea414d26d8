"""Scratch: at the 93 wrong positions (s21 guesses), the true token's rank under the s16 head and a
fine-tuned MLM (argv[1] .pt), head alone and combined with the gradient (evidence.context_candidates'
sum), for several maskings: p alone, the 3-window p-1..p+1, p..the run's end (a rebuild's slot), the
oracle wrong run, and the true context; plus the mean of the two heads' log p."""
import os, sys, json, statistics
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag")); sys.path.insert(0, here)
import torch
import ranks, mlm
from ranks import rank, ctx
from textleak.attacks.evidence import zscores
from textleak.text.masked_prior import ContextHead
from textleak.text.layouts import layout_for

def new_model(t, path):
    st = torch.load(path, weights_only=True)
    head = ContextHead(layout_for(t.model), t.tokenizer.mask_token_id, st["head"])
    m = mlm.MLM(t, head, st["K"]); m.top.load_state_dict(st["top"]); m.eval(); return m

def main():
    stats, new = {}, None
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        t, cap, tok, truth, y, lay, banned, rs, old, prior = ctx(data, int(i))
        new = new or new_model(t, sys.argv[1])
        seq = tok(text)["input_ids"]; L = len(truth)
        if len(seq) != L: continue
        g = ranks.guess_for(t, cap, seq, y)
        wrong = [p for p in range(1, L - 1) if seq[p] != truth[p]]
        groups = {"alone": [[p] for p in wrong], "win3": [[q for q in (p - 1, p, p + 1) if 0 < q < L - 1] for p in wrong]}
        run, tail = [], []
        for p in wrong:
            a = p
            while a - 1 in wrong: a -= 1
            b = p
            while b + 1 in wrong: b += 1
            run.append(list(range(a, b + 1))); tail.append(list(range(p, b + 1)))
        groups["tail"], groups["run"] = tail, run
        for heads in ("old", "new", "mix"):
            for mode, gr in list(groups.items()) + [("truectx", None)]:
                src, grp = (truth, [[p] for p in wrong]) if mode == "truectx" else (seq, gr)
                lo = old.log_probs(src, grp) if heads != "new" else None
                ln = new.log_probs(src, grp) if heads != "old" else None
                for k, p in enumerate(wrong):
                    j = grp[k].index(p)
                    lp = lo[k][j] if heads == "old" else ln[k][j] if heads == "new" else 0.5 * (lo[k][j] + ln[k][j])
                    m_z = zscores((g.T[lay.word_embedding_name] @ g.e[p]).cpu(), banned)
                    comb = lp.double() + m_z + 0.5 * zscores(rs[:, p], banned)
                    stats.setdefault(f"{heads} head {mode}", []).append(rank(lp, truth[p]))
                    stats.setdefault(f"{heads} comb {mode}", []).append(rank(comb, truth[p]))
        print(label, i, "done", flush=True)
    print(f"{len(stats['old head alone'])} wrong positions; source | median | top 4 | top 32 | top 100")
    for k, v in stats.items():
        print(f"{k} | {statistics.median(v):g} | {sum(x < 4 for x in v)} | {sum(x < 32 for x in v)} | {sum(x < 100 for x in v)}")
    json.dump(stats, open(sys.argv[2], "w"))

if __name__ == "__main__":
    main()
