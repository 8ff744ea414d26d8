"""Scratch (s22): ownership of the strong-row tokens at batch 4, noise 1e-6 (as fl_defences applies it).
For each strong token, its J gain in each sentence against fillers (as likelihood_batch._place scores it),
broken down by parameter group; and the batch misfit of whole placements (greedy as _place, truth).
usage: python ownership.py DATA INDEX"""
import itertools, json, math, os, resource, sys
from collections import defaultdict
import torch
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _Batch, _gradient
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
banned = special_ids(layout, tok)
W, P = G[word].double(), G[pos].double()
strong = strong_rows(row_scores(W, P, max(lengths), banned), W, P, sigma, 5.0)
fill = filler_ids(tok)
inner = [range(1, n - 1) for n in lengths]


def group(name):
    if "embeddings" in name:
        return "emb"
    if ".layer." in name:
        return "L" + name.split(".layer.")[1].split(".")[0]
    return "head"


def seeded():
    """every sentence at its likeliest filler, as _place."""
    batch = _Batch(layout, G, [[tok.cls_token_id] + [fill[0]] * (n - 2) + [tok.sep_token_id] for n in lengths], labels)
    for i, seq in enumerate(batch.seqs):
        best = None
        for f in fill:
            t = [seq[0]] + [f] * (len(seq) - 2) + [seq[-1]]
            j = parts(batch, i, t)
            tot = sum(j.values())
            if best is None or tot > best[0]:
                best = (tot, t)
        batch.set(i, best[1], labels[i])
    return batch


def parts(batch, i, seq):
    """J_i of seq against sentence i's target, per parameter group."""
    T = batch.target(i)
    g = _gradient(layout, seq, labels[i], batch.names)
    out = defaultdict(float)
    for n in batch.names:
        out[group(n)] += float(2 * (T[n].double() * g[n].double()).sum() - g[n].double().pow(2).sum())
    return out


def gains(batch, i, seq):
    a, b = parts(batch, i, batch.seqs[i]), parts(batch, i, seq)
    return {k: (b[k] - a[k]) / (2 * (B * sigma) ** 2) for k in a}  # nats


batch = seeded()
print("fillers:", [tok.decode(s) for s in batch.seqs], "misfit", batch.misfit())
out = {"data": data, "index": index, "texts": texts, "strong": [], "placements": {}}
owners_all = {}
for v, p, z in strong:
    owners = [i for i, s in enumerate(truth) if p < len(s) and s[p] == v]
    owners_all[(v, p)] = owners
    rec = {"token": tok.convert_ids_to_tokens(v), "pos": p, "z": z, "owners": owners, "gain": {}}
    for i in range(B):
        if p not in inner[i]:
            continue
        t = list(batch.seqs[i]); t[p] = v
        rec["gain"][i] = gains(batch, i, t)
    tot = {i: sum(g.values()) for i, g in rec["gain"].items()}
    last = {i: g["L5"] + g["head"] for i, g in rec["gain"].items()}
    print(f"{rec['token']:>10} p{p} z{z:5.1f} owners {owners} total " + " ".join(f"{i}:{x:8.1f}" for i, x in tot.items())
          + " | L5+head " + " ".join(f"{i}:{x:7.1f}" for i, x in last.items()))
    out["strong"].append(rec)


def placement_misfit(assign):
    b = seeded()
    for (v, p), i in assign.items():
        t = list(b.seqs[i]); t[p] = v
        b.set(i, t, labels[i])
    return b.misfit() / (2 * sigma ** 2), b


# whole placements: the batch misfit (nats) of truth, of _place's greedy, and of truth with one token moved
keys = [(v, p) for v, p, _ in strong]
seeds = [list(s) for s in seeded().seqs]
cache = {}


def own(i, seq):
    key = (i, tuple(seq))
    if key not in cache:
        g = _gradient(layout, seq, labels[i], batch.names)
        cache[key] = {n: x.double() for n, x in g.items()}
    return cache[key]


def misfit(assign):
    seqs = [list(s) for s in seeds]
    for (v, p), i in assign.items():
        seqs[i][p] = v
    gs = [own(i, s) for i, s in enumerate(seqs)]
    per = defaultdict(float)
    for n in batch.names:
        per[group(n)] += float((B * G[n].double() - sum(g[n] for g in gs)).pow(2).sum()) / (2 * (B * sigma) ** 2)
    return sum(per.values()), dict(per)


base, base_parts = misfit({})
def show(label, assign):
    m, per = misfit(assign)
    correct = sum(i in owners_all[k] for k, i in assign.items())
    print(f"  {label:28s} correct {correct}/{len(assign)}  misfit change {m - base:12.1f}  L5+head {per['L5'] + per['head'] - base_parts['L5'] - base_parts['head']:12.1f}"
          f"  emb {per['emb'] - base_parts['emb']:10.1f}  L0-4 {sum(per[f'L{k}'] - base_parts[f'L{k}'] for k in range(5)):10.1f}")
    return m
truth_assign = {k: owners_all[k][0] for k in keys if owners_all[k]}
out["placements"]["truth"] = show("truth", truth_assign)
# greedy as _place: strongest first, each where the batch misfit drops most
greedy = {}
for k in keys:
    best = None
    for i in range(B):
        if k[1] not in inner[i] or any(j == i and q[1] == k[1] for q, j in greedy.items()):
            continue
        m, _ = misfit({**greedy, k: i})
        if best is None or m < best[0]:
            best = (m, i)
    if best is not None:
        greedy[k] = best[1]
out["placements"]["greedy"] = show("greedy", greedy)
out["placements"]["moves"] = []
for k in truth_assign:
    for i in range(B):
        if i == truth_assign[k] or k[1] not in inner[i] or any(j == i and q[1] == k[1] for q, j in truth_assign.items()):
            continue
        m = show(f"truth, {tok.convert_ids_to_tokens(k[0])} -> {i}", {**truth_assign, k: i})
        out["placements"]["moves"].append([tok.convert_ids_to_tokens(k[0]), i, m - out["placements"]["truth"]])
ru = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_s"], out["load"] = ru.ru_utime + ru.ru_stime, os.getloadavg()[0]
json.dump(out, open(f"{os.path.dirname(os.path.abspath(__file__))}/ownership_{data}{index}.json", "w"), indent=1)
print("cpu", out["cpu_s"], "load", out["load"])
