"""Scratch (s22): last-layer per-sentence sites + pooler at batch 4 under noise 1e-6 (as fl_defences applies it):
singular values vs the noise edge, and the relative residual of true / perturbed sentences in the noisy spans.
usage: python spectra.py DATA INDEX"""
import json, math, sys, time, resource, os
import torch
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _gradient

data, index = sys.argv[1], int(sys.argv[2])
B, VAR = 4, 1e-6
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)][index * B:(index + 1) * B]
texts, labels = [t for t, _ in rows], [y for _, y in rows]
noisy = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence=f"noise:{VAR:g}").gradients.gradients
clean = textleak.capture_gradients(target, texts, labels=labels, seed=index).gradients.gradients
layout = layout_for(target.model)
tok = target.tokenizer
last = layout.num_layers - 1
sites = {k: layout.name(m.weight) for k, m in layout.linears(last).items()}
sites["pooler"] = "bert.pooler.dense.weight"
seqs = [tok(t)["input_ids"] for t in texts]
print([len(s) for s in seqs], labels)
sigma = math.sqrt(VAR)
out = {"data": data, "index": index, "texts": texts, "sites": {}}


def own(seq, y):
    return _gradient(layout, seq, y, list(sites.values()))


true_own = [own(s, y) for s, y in zip(seqs, labels)]
rng = torch.Generator().manual_seed(0)
V = tok.vocab_size


def perturb(seq, k):
    s = list(seq)
    ps = torch.randperm(len(s) - 2, generator=rng)[:k] + 1
    for p in ps.tolist():
        s[p] = int(torch.randint(1000, V, (1,), generator=rng))
    return s


for site, name in sites.items():
    Mn, Mc = B * noisy[name].double(), B * clean[name].double()
    N = Mn - Mc
    m, n = Mn.shape
    edge = B * sigma * (math.sqrt(m) + math.sqrt(n))
    sc = torch.linalg.svdvals(Mc)[:6]
    Un, sn, Vhn = torch.linalg.svd(Mn, full_matrices=False)
    sN = torch.linalg.svdvals(N)[0]
    U4, V4 = Un[:, :B], Vhn[:B].T

    def resid(g):
        """row / column / two-sided relative residual of a candidate's own rank-one gradient g."""
        g = g.double()
        r = (g - g @ V4 @ V4.T).norm() / g.norm()
        c = (g - U4 @ (U4.T @ g)).norm() / g.norm()
        t = (g - U4 @ (U4.T @ g @ V4) @ V4.T).norm() / g.norm()
        return float(r), float(c), float(t)

    def tail(g):
        """energy of Mn - g beyond rank B-1, minus that of Mn beyond rank B (the noise floor)."""
        s = torch.linalg.svdvals(Mn - g.double())
        return float(s[B - 1:].pow(2).sum() - sn[B:].pow(2).sum())

    rec = {"clean_sv": sc.tolist(), "noisy_sv": sn[:6].tolist(), "noise_top_sv": float(sN), "mp_edge": edge,
           "true": [resid(g[name]) for g in true_own], "true_tail": [tail(g[name]) for g in true_own]}
    for k in (1, 2, 4):
        rs, ts = [], []
        for i, (s, y) in enumerate(zip(seqs, labels)):
            for _ in range(3):
                g = own(perturb(s, min(k, len(s) - 2)), y)[name]
                rs.append(resid(g)); ts.append(tail(g))
        rec[f"wrong{k}"] = rs
        rec[f"wrong{k}_tail"] = ts
    out["sites"][site] = rec
    print(site, "clean", [f"{x:.3g}" for x in sc.tolist()], "noisy", [f"{x:.3g}" for x in sn[:6].tolist()],
          f"noise top {float(sN):.3g} edge {edge:.3g}")
    for key in ("true", "wrong1", "wrong2", "wrong4"):
        v = torch.tensor(rec[key])
        t = torch.tensor(rec[key + "_tail"] if key != "true" else rec["true_tail"])
        print(f"  {key:7s} row {v[:,0].median():.3g} [{v[:,0].min():.3g},{v[:,0].max():.3g}]  col {v[:,1].median():.3g}"
              f"  two {v[:,2].median():.3g} [{v[:,2].min():.3g},{v[:,2].max():.3g}]  tail {t.median():.3g} [{t.min():.3g},{t.max():.3g}]")
ru = resource.getrusage(resource.RUSAGE_SELF)
out["cpu_s"], out["load"] = ru.ru_utime + ru.ru_stime, os.getloadavg()[0]
json.dump(out, open(f"{os.path.dirname(__file__)}/spectra_{data}{index}.json", "w"), indent=1)
print("cpu", out["cpu_s"], "load", out["load"])
