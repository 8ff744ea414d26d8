"""Scratch (s22, ground truth): does a sentence's own [CLS] target h_s (the last layer's state, what the
pooler gradient disaggregates into) guide a token-by-token descent back to the sentence?

CoLA (argv[1]) dev batch 0 of 64. For each of the first argv[2] sentences: start from the truth with k
content tokens replaced within the leaked candidates of their position (k = 1, 2, 4, all), then sweep the
positions (random order), each taking its best candidate by |h(g) - h_s| / |h_s|, until a sweep changes
nothing. Counts the sentences brought back exactly and the final distance / tokens wrong."""
import sys, json, random, time, torch
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.text.leaks.residuals import padded

data = sys.argv[1] if len(sys.argv) > 1 else "cola"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 16
rng = random.Random(0)
b = leaked_batch(data, 64, 0)
m, truth = b.target.model, b.truth


def cls_states(seqs, chunk=256):
    out = []
    for i in range(0, len(seqs), chunk):
        ids, mask = padded(seqs[i:i + chunk])
        with torch.no_grad():
            out.append(m.bert(ids, attention_mask=mask).last_hidden_state[:, 0].double())
    return torch.cat(out)


H = cls_states(truth)


def descend(seq, target, sweeps=6):
    seq = list(seq); n = len(seq)
    best = float((cls_states([seq])[0] - target).norm() / target.norm())
    evals = 0
    for _ in range(sweeps):
        changed = False
        for p in rng.sample(range(1, n - 1), n - 2):
            opts = [t for t in b.cands.free(p, n) if t != seq[p]]
            if not opts:
                continue
            trial = [seq[:p] + [t] + seq[p + 1:] for t in opts]
            dist = (cls_states(trial) - target).norm(dim=1) / target.norm()
            evals += len(trial)
            k = int(dist.argmin())
            if float(dist[k]) < best - 1e-9:
                seq, best, changed = trial[k], float(dist[k]), True
        if not changed:
            break
    return seq, best, evals


c0 = time.process_time()
report = {}
for k in (2, 4, "all"):
    exact, wrong, evals = 0, [], 0
    for i, s in enumerate(truth[:count]):
        n = len(s)
        kk = n - 2 if k == "all" else min(k, n - 2)
        g = list(s)
        for p in rng.sample(range(1, n - 1), kk):
            g[p] = rng.choice(b.cands.free(p, n))
        out, dist, e = descend(g, H[i])
        evals += e
        exact += out == s
        wrong.append(sum(x != y for x, y in zip(out, s)))
    report[str(k)] = {"exact": exact, "of": count, "wrong_after": wrong, "evals": evals}
    print(f"k={k}: exact {exact}/{count}, tokens wrong after {wrong}, evals {evals}, cpu {time.process_time() - c0:.0f}s", flush=True)
json.dump(report, open(f"recipes/measured/large_batch_cls_s22/truth_descent_{data}.json", "w"), indent=1)
