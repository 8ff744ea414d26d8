"""Scratch diagnosis (ground truth): which wrong stretches remain in a settled guess, and which single
insertion/deletion (any reach, any token deleted) raises J, toward the truth or not."""
import sys, json, time, math
import torch
sys.path.insert(0, "/tmp/s20")
from common import *
from textleak.attacks.evidence import row_scores, special_ids

def main(data, i, text=None, ids=None):
    t, cap, tok, truth, y = setup(data, i)
    seq = ids if ids is not None else tok(text)["input_ids"]
    L = len(truth)
    print(f"== {data} {i} len truth {L} guess {len(seq)}")
    if len(seq) != L:
        print("length differs; skip"); return
    g = guess_for(t, cap, seq, y)
    Jt, Jg = J(g, [truth, seq])
    print(f"J truth {Jt:.5f} guess {Jg:.5f} gap {Jt-Jg:+.5f}")
    wt = tok.convert_ids_to_tokens
    for op, a1, a2, b1, b2 in runs(seq, truth):
        print(f"  {op} [{a1}:{a2}] {wt(seq[a1:a2])} -> [{b1}:{b2}] {wt(truth[b1:b2])}")
    ham0 = sum(a != b for a, b in zip(seq, truth))
    # row evidence
    grads = cap.gradients.gradients
    from textleak.text.layouts import layout_for
    lay = layout_for(t.model)
    W, P = grads[lay.word_embedding_name].double().cpu(), grads[lay.position_embedding_name].double().cpu()
    banned = special_ids(lay, tok)
    rs = row_scores(W, P, L, banned)
    z = (rs - rs[torch.isfinite(rs[:, 0]), :].mean(0)) / rs[torch.isfinite(rs[:, 0]), :].std(0)
    print("  pos guess(z at p-1,p,p+1) | truth(z at p-1,p,p+1)")
    for p in range(1, L - 1):
        f = lambda v: " ".join(f"{float(z[v, q]):5.1f}" if 0 <= q < L else "   . " for q in (p - 1, p, p + 1))
        mark = "  " if seq[p] == truth[p] else "XX"
        print(f"  {p:2d} {mark} {wt([seq[p]])[0]:>14s} {f(seq[p])} | {wt([truth[p]])[0]:>14s} {f(truth[p])}")
    # every single indel: delete a, insert c at b (c = the deleted token, or the true token there)
    inner = range(1, L - 1)
    trials, meta = [], []
    for a in inner:
        rest = seq[:a] + seq[a + 1:]
        for b in inner:
            if b == a:
                continue
            for kind, c in (("move", seq[a]), ("oracle", truth[b])):
                tr = rest[:b] + [c] + rest[b:]
                if tr != seq:
                    trials.append(tr); meta.append((a, b, kind))
    t0 = time.process_time()
    Js = J(g, trials)
    print(f"  {len(trials)} indels scored in {time.process_time()-t0:.1f} CPU s")
    up = sorted([(j, m, tr) for j, m, tr in zip(Js, meta, trials) if j > Jg], key=lambda r: -r[0])
    print(f"  indels raising J: {len(up)} (move {sum(m[2]=='move' for _, m, _ in up)})")
    for j, (a, b, kind), tr in up[:15]:
        ham = sum(x != y for x, y in zip(tr, truth))
        print(f"    dJ {j-Jg:+.5f} del {a} ({wt([seq[a]])[0]}) ins {b} {kind} ({wt([tr[b]])[0]}) wrong {ham0}->{ham}"
              f" repeat={seq.count(seq[a])>1}")

if __name__ == "__main__":
    data, i = sys.argv[1], int(sys.argv[2])
    arg = sys.argv[3]
    if arg.startswith("["):
        main(data, i, ids=json.loads(arg))
    else:
        main(data, i, text=arg)
