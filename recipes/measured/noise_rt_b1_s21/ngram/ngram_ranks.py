"""Scratch (ground truth): at the 93 wrong positions of the 8 settled RT guesses of `../diag/guesses.tsv`,
the true token's rank over the vocabulary by a wider-context n-gram counted over the training sentences
`text.prior` fits on (`prior_files()`, never the dev sentences): tokens seen between the same two left
and two right neighbours (c5), between the same one left and one right (c3), after the same two left (cL),
before the same two right (cR), then the bigram between the neighbours (`PriorCandidates._at`).
Context from the TRUE sentence and from the guess. Columns:
  bo   backoff, lexicographic (c5, c3, cL + cR relative, bigram): a token seen in the widest context first
  interp  log(.4 f5 + .3 f3 + .15 fL + .15 fR + .05 p_bigram) (f: relative frequency in that context)
  c3bo / lrbo: backoff without the 5-window / only one-sided trigrams then bigram
  comb_interp: interp + z(matched) + z(rows)/2 (the `context_candidates` sum with the n-gram for the head)
  comb_headngram: head log p (position masked alone in that context) + interp + z(matched) + z(rows)/2
  left: log(.6 fL + .4 p_bigram(w | left neighbour)), the left two tokens only (what a left-to-right
        stretch rebuild has); comb_left: left + z(matched) + z(rows)/2
  nbr_right: how many of the position's two neighbours the guess has right
Usage: python ngram_ranks.py OUT.jsonl < ../diag/guesses.tsv"""
import sys, os, json, time, math
from collections import Counter, defaultdict
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../diag"))
import ranks as R  # noqa: E402  (also puts ../../noise_rt_b1_s20/diag on the path)
from common import guess_for  # noqa: E402
from textleak.attacks.evidence import zscores  # noqa: E402
from textleak.text.prior import prior_files, training_texts  # noqa: E402

def wanted(items):
    """The context keys needed: per (seq, p) the 4 contexts."""
    keys = {"c5": set(), "c3": set(), "cL": set(), "cR": set()}
    for seq, p in items:
        for k, v in ctx_keys(seq, p).items():
            keys[k].add(v)
    return keys

def ctx_keys(seq, p):
    g = lambda i: seq[i] if 0 <= i < len(seq) else -1
    return {"c5": (g(p-2), g(p-1), g(p+1), g(p+2)), "c3": (g(p-1), g(p+1)), "cL": (g(p-2), g(p-1)), "cR": (g(p+1), g(p+2))}

def count(tok, keys):
    counts = {k: defaultdict(Counter) for k in keys}
    n = 0
    for path in prior_files():
        for ids in tok(training_texts(path))["input_ids"]:
            n += 1
            for p in range(1, len(ids) - 1):
                for k, v in ctx_keys(ids, p).items():
                    if v in keys[k]:
                        counts[k][v][ids[p]] += 1
    return counts, n

def vec(counter, V):
    x = torch.zeros(V, dtype=torch.float64)
    for w, c in counter.items():
        x[w] = c
    return x

def lexrank(keys, t):
    """Number of tokens strictly greater than t in lexicographic order of the key vectors."""
    greater = torch.zeros_like(keys[0], dtype=torch.bool)
    eq = torch.ones_like(greater)
    for k in keys:
        greater |= eq & (k > k[t])
        eq &= (k == k[t])
    return int(greater.sum())

def scores(seq, p, counts, prior, banned, V):
    c = {k: vec(counts[k].get(v, {}), V).masked_fill(banned, 0) for k, v in ctx_keys(seq, p).items()}
    rel = {k: x / x.sum() if x.sum() > 0 else x for k, x in c.items()}
    big = prior._at(seq, p, True, torch.zeros_like(prior.uni)).double()
    pb = torch.softmax(big.masked_fill(banned, -math.inf), 0)
    interp = torch.log(.4 * rel["c5"] + .3 * rel["c3"] + .15 * rel["cL"] + .15 * rel["cR"] + .05 * pb).masked_fill(banned, -math.inf)
    lr = rel["cL"] + rel["cR"]
    pl = torch.softmax(prior._at(seq, p, False, torch.zeros_like(prior.uni)).double().masked_fill(banned, -math.inf), 0)
    left = torch.log(.6 * rel["cL"] + .4 * pl).masked_fill(banned, -math.inf)
    return dict(left=left, bo=(c["c5"], c["c3"], lr, big), c3bo=(c["c3"], lr, big), lrbo=(lr, big), interp=interp,
                n5=int((c["c5"] > 0).sum()), n3=int((c["c3"] > 0).sum()), nLR=int((lr > 0).sum()))

def main():
    guesses = [ln.rstrip("\n").split("\t") for ln in sys.stdin if ln.strip()]
    items, plan = [], []
    for label, data, i, text in guesses:
        t, cap, tok, truth, y, lay, banned, rs, head, prior = R.ctx(data, int(i))
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth):
            continue
        wrong = [p for p in range(1, len(seq) - 1) if seq[p] != truth[p]]
        plan.append((label, data, int(i), seq, truth, wrong))
        items += [(seq, p) for p in wrong] + [(truth, p) for p in wrong]
    c0 = time.process_time()
    counts, n = count(tok, wanted(items))
    print(f"# counted {n} training sentences in {time.process_time() - c0:.0f} CPU s", flush=True)
    out = open(sys.argv[1], "w")
    for label, data, i, seq, truth, wrong in plan:
        t, cap, tok, truth, y, lay, banned, rs, head, prior = R.ctx(data, i)
        ban = banned.cpu()
        V = int(ban.shape[0])
        g = guess_for(t, cap, seq, y)
        word = lay.word_embedding_name
        for p in wrong:
            tt = truth[p]
            row = dict(label=label, data=data, i=i, p=p, guess=tok.convert_ids_to_tokens([seq[p]])[0],
                       true=tok.convert_ids_to_tokens([tt])[0])
            mz = zscores((g.T[word] @ g.e[p]).cpu(), ban) + 0.5 * zscores(rs[:, p], ban)
            row["nbr_right"] = int(seq[p - 1] == truth[p - 1]) + int(seq[p + 1] == truth[p + 1])
            for ctxname, s in (("guess", seq), ("truectx", truth)):
                sc = scores(s, p, counts, prior, ban, V)
                for k in ("bo", "c3bo", "lrbo"):
                    row[f"{k}_{ctxname}"] = lexrank(sc[k], tt)
                row[f"interp_{ctxname}"] = R.rank(sc["interp"], tt)
                row[f"comb_interp_{ctxname}"] = R.rank(sc["interp"] + mz, tt)
                row[f"left_{ctxname}"] = R.rank(sc["left"], tt)
                row[f"comb_left_{ctxname}"] = R.rank(sc["left"] + mz, tt)
                lp = head.log_probs(s, [[p]])[0][0].double()
                row[f"comb_headngram_{ctxname}"] = R.rank(lp + sc["interp"] + mz, tt)
                row[f"seen_{ctxname}"] = (sc["n5"], sc["n3"], sc["nLR"])
            print("  " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            out.write(json.dumps(row) + "\n")
    out.close()

if __name__ == "__main__":
    main()
