"""Scratch (s23, ground truth): continuous relaxation onto a sentence's own [CLS] state. Per position a
softmax over the column's candidates mixes their word embeddings; Adam on |h - h_s|^2 / |h_s|^2 (+ an
entropy push late), then argmax rounding, then `guided.Guided` (top 8). Right length and one shorter/longer."""
import sys, time, random, json, torch
sys.path.insert(0, "recipes/measured/large_batch_inv_s23")
from common import setup, states
from guided import Guided
data = sys.argv[1]; count = int(sys.argv[2]); steps = int(sys.argv[3]); which = sys.argv[4].split(",")
b = setup(data); torch.manual_seed(0)
H = states(b, b.truth)
g = Guided(b, 8)
W = g.W
cls, sep = b.tok.cls_token_id, b.tok.sep_token_id


def relax(n, t, restarts=4):
    opts = [torch.tensor(b.options[p]) for p in range(1, n - 1)]
    Z = [torch.randn(restarts, len(o), dtype=torch.float32) * 0.1 for o in opts]
    for z in Z:
        z.requires_grad_(True)
    opt = torch.optim.Adam(Z, lr=0.1)
    ends = W[torch.tensor([cls, sep])]
    for it in range(steps):
        tau = 1.0 if it < steps // 2 else 1.0 - 0.9 * (it - steps // 2) / (steps - steps // 2)
        with torch.enable_grad():
            mids = torch.stack([torch.softmax(z / tau, 1) @ W[o] for z, o in zip(Z, opts)], 1)
            E = torch.cat([ends[0].expand(restarts, 1, -1), mids, ends[1].expand(restarts, 1, -1)], 1)
            h = g.base(inputs_embeds=E, attention_mask=torch.ones(restarts, n, dtype=torch.long)).last_hidden_state[:, 0].double()
            loss = ((h - t) ** 2).sum(1) / (t ** 2).sum()
            opt.zero_grad(); loss.sum().backward(); opt.step()
    seqs = [[cls] + [int(o[int(z[r].argmax())]) for z, o in zip(Z, opts)] + [sep] for r in range(restarts)]
    return seqs, loss.detach().sqrt()


out = {}
idx = list(range(0, 64, max(1, 64 // count)))[:count]
for w in which:
    c0 = time.process_time(); rows = []
    for i in idx:
        s = b.truth[i]; n = len(s) + {"right": 0, "short": -1, "long": 1}[w]
        seqs, soft = relax(n, H[i])
        d0 = g.dist(seqs, H[i].expand(len(seqs), -1))
        o, d = g.run(seqs, H[i].expand(len(seqs), -1), full=False)
        k = int(d.argmin())
        rows.append({"i": i, "n": len(s), "soft": [round(float(x), 4) for x in soft], "rounded": [round(float(x), 4) for x in d0],
                     "dist": float(d[k]), "exact": o[k] == s, "any_exact": any(x == s for x in o),
                     "wrong_rounded": [sum(x != y for x, y in zip(q, s)) for q in seqs] if w == "right" else None,
                     "wrong": sum(x != y for x, y in zip(o[k], s)) if w == "right" else None})
        print(rows[-1], flush=True)
    cpu = time.process_time() - c0
    print(f"{w}: exact {sum(r['exact'] for r in rows)}/{len(rows)} cpu {cpu:.0f}", flush=True)
    out[w] = {"rows": rows, "cpu_s": cpu}
json.dump(out, open(f"recipes/measured/large_batch_inv_s23/truth_relax_{data}_{steps}_{'_'.join(which)}.json", "w"), indent=1)
