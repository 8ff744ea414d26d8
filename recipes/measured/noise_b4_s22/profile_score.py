"""Scratch (s22): a per-sentence score independent of the other sentences' guesses: at each last-layer
per-sentence site (+ pooler), the energy of B G - g(x) beyond rank B-1 (the other sentences free as any
rank B-1 matrix), in nats (/ 2 (B sigma)^2). Does it place the strong tokens in their owners among fillers,
and does it prefer each true sentence to the true sentence with one strong token moved out?
usage: python profile_score.py DATA INDEX"""
import json, math, os, resource, sys
import torch
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _gradient
from textleak.attacks.evidence import row_scores, filler_ids, special_ids
from textleak.attacks.likelihood_batch import strong_rows

data, index = sys.argv[1], int(sys.argv[2])
B, VAR = 4, 1e-6
sigma = math.sqrt(VAR)
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)][index * B:(index + 1) * B]
texts, labels = [t for t, _ in rows], [y for _, y in rows]
G = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence=f"noise:{VAR:g}").gradients.gradients
layout, tok = layout_for(target.model), target.tokenizer
truth = [tok(t)["input_ids"] for t in texts]
lengths = [len(s) for s in truth]
word, pos = layout.word_embedding_name, layout.position_embedding_name
W, P = G[word].double(), G[pos].double()
strong = strong_rows(row_scores(W, P, max(lengths), special_ids(layout, tok)), W, P, sigma, 5.0)
last = layout.num_layers - 1
sites = [layout.name(m.weight) for m in layout.linears(last).values()] + ["bert.pooler.dense.weight"]
M = {n: B * G[n].double() for n in sites}
sn = {n: torch.linalg.svdvals(M[n]) for n in sites}
fill = filler_ids(tok)


def profile(i, seq):
    """minus the tail energy beyond rank B-1 of M - g(seq), summed over sites, in nats (higher: likelier)."""
    g = _gradient(layout, seq, labels[i], sites)
    tot = 0.0
    for n in sites:
        s = torch.linalg.svdvals(M[n] - g[n].double())
        tot += float(s[B - 1:].pow(2).sum() - sn[n][B:].pow(2).sum())
    return -tot / (2 * (B * sigma) ** 2)


out = {"data": data, "index": index, "texts": texts}
seeds = []
for i, n in enumerate(lengths):
    opts = [[tok.cls_token_id] + [f] * (n - 2) + [tok.sep_token_id] for f in fill]
    sc = [profile(i, o) for o in opts]
    seeds.append(opts[max(range(len(opts)), key=lambda k: sc[k])])
base = [profile(i, s) for i, s in enumerate(seeds)]
right = 0
out["filler"] = []
for v, p, z in strong:
    owners = [i for i, s in enumerate(truth) if p < len(s) and s[p] == v]
    gains = {}
    for i in range(B):
        if 1 <= p < lengths[i] - 1:
            t = list(seeds[i]); t[p] = v
            gains[i] = profile(i, t) - base[i]
    pick = max(gains, key=gains.get)
    right += pick in owners
    out["filler"].append([tok.convert_ids_to_tokens(v), p, owners, gains])
    print(f"{tok.convert_ids_to_tokens(v):>10} p{p} owners {owners} pick {pick} " + " ".join(f"{i}:{g:9.1f}" for i, g in gains.items()))
print(f"among fillers: {right}/{len(strong)} placed in an owner")
# truth context: sentence i true vs the true sentence j with i's strong token moved in (i gets a filler there)
out["truth"] = []
tp = [profile(i, s) for i, s in enumerate(truth)]
for v, p, z in strong:
    owners = [i for i, s in enumerate(truth) if p < len(s) and s[p] == v]
    if not owners:
        continue
    o = owners[0]
    t = list(truth[o]); t[p] = fill[0]
    lose = profile(o, t) - tp[o]
    for j in range(B):
        if j == o or not (1 <= p < lengths[j] - 1):
            continue
        u = list(truth[j]); u[p] = v
        gain = profile(j, u) - tp[j]
        out["truth"].append([tok.convert_ids_to_tokens(v), o, j, lose, gain])
        print(f"  truth: {tok.convert_ids_to_tokens(v):>10} out of {o}: {lose:9.1f}  into {j}: {gain:9.1f}  move {'kept' if lose + gain > 0 else 'refused'}")
ru = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_s"], out["load"] = ru.ru_utime + ru.ru_stime, os.getloadavg()[0]
json.dump(out, open(f"{os.path.dirname(os.path.abspath(__file__))}/profile_{data}{index}.json", "w"), indent=1)
print("cpu", out["cpu_s"], "load", out["load"])
