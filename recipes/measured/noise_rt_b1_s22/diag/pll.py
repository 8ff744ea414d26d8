"""Scratch: would the masked LM serve as a term of the objective (where J is flat among function
words)? For each s21 settled guess: the pseudo-log-likelihood (each body position masked alone,
log p of the token there, summed) of the guess and of the truth, under the s16 head and a fine-tuned
MLM (argv[1]); and at each wrong position, whether putting the true token in alone raises it
(session 21: J rises at 8 of 93, J_w at 25)."""
import os, sys, json
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag")); sys.path.insert(0, here)
from ranks import ctx
from modes import new_model

def pll(head, seq):
    body = list(range(1, len(seq) - 1))
    lp = head.log_probs(seq, [[p] for p in body])
    return sum(float(l[0, seq[p]]) for l, p in zip(lp, body))

def main():
    new, out = None, {}
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        t, cap, tok, truth, y, lay, banned, rs, old, prior = ctx(data, int(i))
        new = new or new_model(t, sys.argv[1])
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth): continue
        wrong = [p for p in range(1, len(seq) - 1) if seq[p] != truth[p]]
        for name, h in (("old", old), ("new", new)):
            g, tr = pll(h, seq), pll(h, truth)
            ups, deltas = 0, []
            for p in wrong:
                s = list(seq); s[p] = truth[p]
                d = pll(h, s) - g; deltas.append(d)
                ups += d > 0
            out.setdefault(name, []).append((label, i, g, tr, ups, len(wrong), wrong, deltas))
            print(f"{label} RT{i} {name}: PLL guess {g:.1f} truth {tr:.1f} (truth higher: {tr > g}); true token alone raises PLL at {ups} of {len(wrong)}", flush=True)
    for name, rows in out.items():
        json.dump(out, open(sys.argv[2], "w")) if len(sys.argv) > 2 else None
        print(f"{name}: truth > guess in {sum(r[3] > r[2] for r in rows)} of {len(rows)}; singles raise PLL at {sum(r[4] for r in rows)} of {sum(r[5] for r in rows)}")

if __name__ == "__main__":
    main()
