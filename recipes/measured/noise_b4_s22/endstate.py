"""Scratch (s22): run the recipe's attack (fl_defences.run_unit's capture and recover, `auto`, budget BUDGET)
on one batch of 4 at noise 1e-6, keep the final token ids, then ask whether the final state's ownership
errors of the strong-row tokens cost likelihood: the batch misfit (nats, by parameter group) of the final
state, and of it with each misowned strong token swapped into its owner at the same position.
usage: python endstate.py DATA INDEX BUDGET"""
import json, math, os, resource, sys, time
from collections import defaultdict
import torch
import textleak
from textleak.attacks.base import prepare
from textleak.core.budget import time_budget
from textleak.data import read_sentences
from textleak.defences import parse_defence
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _gradient
from textleak.attacks.evidence import row_scores, special_ids
from textleak.attacks.likelihood_batch import strong_rows
from textleak.validate import attack_instance

data, index, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
B, VAR = 4, 1e-6
sigma = math.sqrt(VAR)
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)][index * B:(index + 1) * B]
texts, labels = [t for t, _ in rows], [y for _, y in rows]
spec = f"noise:{VAR:g}"
cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence=spec)
prepare(attack_instance("auto", None, index), target, noisy=parse_defence(spec).adds_noise)
t0, c0 = time.perf_counter(), time.process_time()
with time_budget(budget):
    res = textleak.recover(gradients=cap.gradients, model=target, attack="auto", reference=cap.reference,
                           unknown=["labels"], progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
final = [list(s) for s in res.prediction["token_ids"]]
flabels = list(res.prediction["labels"])
print(f"method {res.method} rouge1 {res.metrics['mean']['rouge1']:.3f} wall {wall:.0f} cpu {cpu:.0f} load {os.getloadavg()[0]:.1f}")
print("recovered:", res.texts)
G = cap.gradients.gradients
layout, tok = layout_for(target.model), target.tokenizer
truth = [tok(t)["input_ids"] for t in texts]
lengths = [len(s) for s in truth]
word, pos = layout.word_embedding_name, layout.position_embedding_name
W, P = G[word].double(), G[pos].double()
strong = strong_rows(row_scores(W, P, max(lengths), special_ids(layout, tok)), W, P, sigma, 5.0)
names = [n for n in G if n in dict(target.model.named_parameters())]


def group(n):
    return "emb" if "embeddings" in n else ("L" + n.split(".layer.")[1].split(".")[0] if ".layer." in n else "head")


def misfit(seqs, labs):
    gs = [_gradient(layout, s, y, names) for s, y in zip(seqs, labs)]
    per = defaultdict(float)
    for n in names:
        per[group(n)] += float((B * G[n].double() - sum(g[n].double() for g in gs)).pow(2).sum()) / (2 * (B * sigma) ** 2)
    return per


def show(tag, per, ref=None):
    tot = sum(per.values())
    if ref is None:
        print(f"  {tag:34s} misfit {tot:14.1f} nats")
    else:
        d = {k: per[k] - ref[k] for k in per}
        print(f"  {tag:34s} change {sum(d.values()):10.1f}  emb {d['emb']:8.1f}  L0-4 {sum(d[f'L{k}'] for k in range(5)):9.1f}"
              f"  L5+head {d['L5'] + d['head']:9.1f}")
    return tot


out = {"data": data, "index": index, "texts": texts, "recovered": res.texts, "rouge1": res.metrics["mean"]["rouge1"],
       "wall_s": wall, "attack_cpu_s": cpu, "final_ids": final, "labels": flabels, "moves": []}
base = misfit(final, flabels)
out["final_misfit"] = show("final", base)
out["truth_misfit"] = show("truth (true labels)", misfit(truth, labels), base)
for v, p, z in strong:
    owners = [i for i, s in enumerate(truth) if p < len(s) and s[p] == v]
    holders = [i for i, s in enumerate(final) if p < len(s) and s[p] == v]
    name = tok.convert_ids_to_tokens(v)
    print(f"{name:>10} p{p} owners {owners} held by {holders}")
    for o in owners:
        if o in holders:
            continue
        for j in holders or [None]:
            seqs = [list(s) for s in final]
            if j is not None:
                seqs[j][p] = final[o][p]  # swap
            seqs[o][p] = v
            tag = f"{name} {j}->{o}" if j is not None else f"{name} into {o}"
            out["moves"].append([name, j, o, show(tag, misfit(seqs, flabels), base) - out["final_misfit"]])
ru = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_s"], out["load"] = ru.ru_utime + ru.ru_stime, os.getloadavg()[0]
json.dump(out, open(f"{os.path.dirname(os.path.abspath(__file__))}/endstate_{data}{index}.json", "w"), indent=1)
print("cpu", out["cpu_s"], "load", out["load"])
