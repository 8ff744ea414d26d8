"""Scratch (ground truth): every single insertion/deletion of a settled guess (any token deleted, reach R,
inserted token: the deleted one, or the code's indel shortlist + context candidates), scored on J; plus
per-position support and row shift evidence, to judge which cheap selection rule would find the J-raising ones."""
import sys, json, time
import torch
sys.path.insert(0, "/tmp/s20")
from common import *
from textleak.attacks.likelihood_state import _Batch, _Guess
from textleak.threat import Observation
from textleak.attacks.likelihood import LikelihoodSearch
from textleak.attacks.likelihood_moves import Moves
from textleak.attacks.evidence import ContextCandidates, candidates, confident, row_scores

def probe(data, i, text, R=10):
    t, cap, tok, truth, y = setup(data, i)
    seq = tok(text)["input_ids"]
    L = len(truth)
    if len(seq) != L:
        return {"data": data, "i": i, "text": text, "skip": f"len {len(seq)} != {L}"}
    obs = Observation.from_file(cap.gradients, unknown=["labels"])
    s = LikelihoodSearch(prior="bigram")
    s._begin()
    layout, lengths, level, labels, note, banned = s._read(obs, t)
    word, pos = layout.word_embedding_name, layout.position_embedding_name
    W, P = obs.gradients[word].double().cpu(), obs.gradients[pos].double().cpu()
    scores = row_scores(W, P, L, banned)
    s._context, _ = ContextCandidates.of(t, scores, banned, s.context)
    ev = candidates(scores, lengths, s.per_position)[0]
    batch = _Batch(layout, obs.gradients, [seq], labels, None)
    g = _Guess(batch, 0, False)
    moves = Moves(s, ev, banned, word)
    inner = range(1, L - 1)
    short = moves.shortlist(g, inner)
    ctx = s._context.sweep(g, list(inner), word) if s._context is not None else {}
    support = s._rebuild.support(g, inner, s._fillers)
    fin = torch.isfinite(scores[:, 0])
    z = (scores - scores[fin].mean(0)) / scores[fin].std(0)
    rowz = [[float(z[seq[p], q]) if 0 <= q < L else None for q in (p - 1, p, p + 1)] for p in range(L)]
    trials, meta = [], []
    for a in inner:
        rest = seq[:a] + seq[a + 1:]
        for b in range(max(1, a - R), min(L - 1, a + R + 1)):
            if b == a:
                continue
            opts = {seq[a]: "move"}
            for c in short[b]:
                opts.setdefault(c, "short")
            for c in ctx.get(b, []):
                opts.setdefault(c, "ctx")
            for c, kind in opts.items():
                tr = rest[:b] + [c] + rest[b:]
                if tr != seq:
                    trials.append(tr); meta.append((a, b, c, kind))
    c0 = time.process_time()
    Js = J(g, trials)
    cpu = time.process_time() - c0
    Jt, = J(g, [truth])
    up = []
    for j, (a, b, c, kind), tr in zip(Js, meta, trials):
        if j > g.best:
            up.append([a, b, c, kind, j - g.best, sum(x != y for x, y in zip(tr, truth))])
    up.sort(key=lambda r: -r[4])
    return {"data": data, "i": i, "text": text, "L": L, "Jg": g.best, "Jt": Jt, "ham0": sum(x != y for x, y in zip(seq, truth)),
            "seq": seq, "truth": truth, "toks": tok.convert_ids_to_tokens(seq), "ttoks": tok.convert_ids_to_tokens(truth),
            "support": support, "rowz": rowz, "n_trials": len(trials), "cpu": cpu, "up": up,
            "up_tokens": [tok.convert_ids_to_tokens([r[2]])[0] for r in up],
            "repeat": [seq.count(v) > 1 for v in seq], "fillers": s._fillers}

if __name__ == "__main__":
    out = open(sys.argv[1], "a")
    for line in sys.stdin:
        data, i, text = line.rstrip("\n").split("\t")
        r = probe(data, int(i), text)
        out.write(json.dumps(r) + "\n"); out.flush()
        print(data, i, r.get("skip") or f"L {r['L']} gap {r['Jt']-r['Jg']:+.4f} trials {r['n_trials']} cpu {r['cpu']:.0f} up {len(r['up'])} best {r['up'][:3]}", flush=True)
