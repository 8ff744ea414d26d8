"""Scratch (s25): diag_truth's question by parameter group: from a unit's end state, each sentence set to
its truth with the others at their guesses; the batch log-likelihood change (nats, + = the truth likelier)
per group: word/position embeddings, each encoder layer, pooler + classifier (as s22's endstate.py).
usage: python diag_groups.py UNITS.jsonl"""
import json, os, resource, sys
from collections import defaultdict
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _gradient

B, SIG = 4, 1e-3
target = load_text_model(None, task="classify")
tok = target.tokenizer
layout = layout_for(target.model)
dot = tok.convert_tokens_to_ids(".")


def group(n):
    return "emb" if "embeddings" in n else ("L" + n.split(".layer.")[1].split(".")[0] if ".layer." in n else "head")


for line in open(sys.argv[1]):
    u = json.loads(line)
    index = u["index"]
    rows = [(t, y or 0) for t, y in read_sentences(u["data"])][index * B:(index + 1) * B]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence="noise:1e-06")
    G = cap.gradients.gradients
    names = [n for n in G if n in dict(target.model.named_parameters())]
    truth = [tok(t)["input_ids"] for t in texts]
    guess = []
    for t, r in zip(u["recovered"], truth):
        g = tok(t)["input_ids"][1:-1][: len(r) - 2]
        guess.append([r[0]] + g + [dot] * (len(r) - 2 - len(g)) + [r[-1]])
    gg = [_gradient(layout, s, y, names) for s, y in zip(guess, labels)]
    gt = [_gradient(layout, s, y, names) for s, y in zip(truth, labels)]

    def misfit(gs):
        per = defaultdict(float)
        for n in names:
            per[group(n)] += float((B * G[n].double() - sum(g[n].double() for g in gs)).pow(2).sum()) / (2 * (B * SIG) ** 2)
        return per

    base = misfit(gg)
    keys = sorted(base, key=lambda k: (k != "emb", k == "head", k))
    print(u["key"], "groups:", " ".join(keys))
    for i in range(B):
        alt = misfit(gg[:i] + [gt[i]] + gg[i + 1:])
        d = {k: base[k] - alt[k] for k in keys}
        print(f"  sentence {i} -> truth, others at guesses: total {sum(d.values()):+.0f} |", " ".join(f"{d[k]:+.0f}" for k in keys))
    alt = misfit(gt)
    d = {k: base[k] - alt[k] for k in keys}
    print(f"  all four -> truth: total {sum(d.values()):+.0f} |", " ".join(f"{d[k]:+.0f}" for k in keys))
ru = resource.getrusage(resource.RUSAGE_SELF)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
