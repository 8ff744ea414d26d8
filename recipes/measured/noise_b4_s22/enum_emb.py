"""Scratch (s22): every assignment of the strong-row tokens to sentences (others at their likeliest filler,
as likelihood_batch._place starts), scored by the batch misfit on the embedding group alone (word, position,
token-type rows and the embedding LayerNorm), in nats. Where does the true assignment rank?
usage: python enum_emb.py DATA INDEX"""
import itertools, json, math, os, resource, sys
import torch
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _Batch, _gradient
from textleak.attacks.evidence import row_scores, filler_ids, special_ids
from textleak.attacks.likelihood_batch import strong_rows
from textleak.attacks.likelihood import LikelihoodSearch

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
fill = filler_ids(tok)
batch = _Batch(layout, G, [[tok.cls_token_id] + [fill[0]] * (n - 2) + [tok.sep_token_id] for n in lengths], labels)
for i, seq in enumerate(batch.seqs):  # the likeliest filler by the whole J, as _place
    LikelihoodSearch._seed(batch, i, [[seq[0]] + [f] * (len(seq) - 2) + [seq[-1]] for f in fill])
seeds = [list(s) for s in batch.seqs]
emb = [n for n in batch.names if "embeddings" in n]
keys = [(v, p) for v, p, _ in strong]
owners = {k: [i for i, s in enumerate(truth) if k[1] < len(s) and s[k[1]] == k[0]] for k in keys}
fits = [[k for k in keys if 1 <= k[1] < lengths[i] - 1] for i in range(B)]
ids_used = sorted({t for s in seeds for t in s} | {v for v, _ in keys})
Lmax = max(lengths)


def flat(g):
    parts = []
    for n in emb:
        x = g[n].double()
        if n == word:
            x = x[ids_used]
        elif n == pos:
            x = x[:Lmax]
        parts.append(x.flatten())
    return torch.cat(parts)


Mflat = flat({n: B * G[n] for n in emb})
contents, X = [], []  # (sentence, frozenset of keys) -> row of X
for i in range(B):
    for r in range(len(fits[i]) + 1):
        for S in itertools.combinations(fits[i], r):
            if len({p for _, p in S}) < len(S):
                continue
            seq = list(seeds[i])
            for v, p in S:
                seq[p] = v
            contents.append((i, frozenset(S)))
            X.append(flat(_gradient(layout, seq, labels[i], emb)))
X = torch.stack(X)
Gram, MX = X @ X.T, X @ Mflat
at = {c: k for k, c in enumerate(contents)}
print("contents", len(contents))
opts = [[i for i in range(B) if k in fits[i]] for k in keys]
res = []
for combo in itertools.product(*opts):
    sets = [frozenset(k for k, i in zip(keys, combo) if i == s) for s in range(B)]
    if any((s, S) not in at for s, S in enumerate(sets)):
        continue  # two tokens at one position of one sentence
    idx = [at[(s, S)] for s, S in enumerate(sets)]
    change = (-2 * MX[idx].sum() + Gram[idx][:, idx].sum()) / (2 * (B * sigma) ** 2)
    res.append((float(change), sum(i in owners[k] for k, i in zip(keys, combo)), combo))
res.sort()
true_combo = tuple(owners[k][0] if owners[k] else -1 for k in keys)
rank = next((r for r, x in enumerate(res) if x[2] == true_combo), None)
print(f"assignments {len(res)}; true assignment ranks {rank}; best: ")
for m, c, combo in res[:8]:
    print(f"  {m:10.1f} nats  correct {c}/{len(keys)}  {combo}")
if rank is not None:
    print(f"  truth {res[rank][0]:10.1f}")
hist = {}
for m, c, _ in res[:50]:
    hist[c] = hist.get(c, 0) + 1
print("correct counts among the best 50:", dict(sorted(hist.items())))
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"data": data, "index": index, "tokens": [tok.convert_ids_to_tokens(v) for v, _ in keys], "true": true_combo,
           "rank": rank, "best": [[m, c, list(x)] for m, c, x in res[:50]], "cpu_s": ru.ru_utime + ru.ru_stime,
           "load": os.getloadavg()[0]}, open(f"{os.path.dirname(os.path.abspath(__file__))}/enum_emb_{data}{index}.json", "w"), indent=1)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
