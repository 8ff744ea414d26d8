"""Scratch (s22, ground truth): do per-sentence targets (the true [CLS] state h_s of the last layer)
rank partial guesses better than the last layer's span score?

CoLA (or argv[1]) dev batch 0 of 64, MiniLM, eval-mode gradient. Scores (lower = better):
span: SentenceSpans.score; own: |h(g) - h_s| / |h_s| (the guess's own sentence); near: min over the
batch's h of the same; pool: the pooler test of h(g) alone (v(h) off the pooler gradient's column
space, h off its row space; needs no disaggregation).
Tests: (1) tail exchange as bag_parts measured: every sentence with a share q of its content tokens
swapped within their columns, 200 random pairs of sentences, a random cut; how often the right link's
summed score beats the exchanged pair's; (2) k wrong tokens (1,2,4,8, within columns): how often the
guess with fewer wrong beats the one with more, and median score per k."""
import sys, json, random, time, torch
from scipy.optimize import linear_sum_assignment
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.text.leaks import sentence_spans
from textleak.text.leaks.residuals import padded

data = sys.argv[1] if len(sys.argv) > 1 else "cola"
rng = random.Random(0)
b = leaked_batch(data, 64, 0)
m, truth, B = b.target.model, b.truth, len(b.truth)
spans = sentence_spans(b.layout, b.grads, B, "classify")
from textleak.attacks.bag_parts import ShareScorer, columns
from textleak.attacks.exact.candidates import vocabulary
from textleak.attacks.exact.sequences import occupants
from textleak.text.leaks import token_positions
_vocab = vocabulary(b.layout, b.grads, b.tok, "classify")[0].tolist()
_pins = token_positions(b.layout, b.grads, _vocab, max(b.lengths), occupants(b.lengths))
_cols = columns(b.grads[b.layout.word_embedding_name], _pins, _vocab, b.lengths, {b.tok.cls_token_id, b.tok.sep_token_id, b.tok.pad_token_id})
share = ShareScorer(b.layout, _cols.shares, 2)


def cls_states(seqs, chunk=128):
    out = []
    for i in range(0, len(seqs), chunk):
        ids, mask = padded(seqs[i:i + chunk])
        with torch.no_grad():
            out.append(m.bert(ids, attention_mask=mask).last_hidden_state[:, 0].double())
    return torch.cat(out)


H = cls_states(truth)
Wp, bp = m.bert.pooler.dense.weight.double().detach(), m.bert.pooler.dense.bias.double().detach()
d = (m.classifier.weight[0] - m.classifier.weight[1]).double().detach()
U, S, Vh = torch.linalg.svd(b.grads["bert.pooler.dense.weight"].double() / d[:, None])
P, Q = U[:, :B], Vh[:B].T


def scores(seqs, own):
    h = cls_states(seqs)
    rel = torch.cdist(h, H) / H.norm(dim=1)[None]
    vv = 1 - torch.tanh(h @ Wp.T + bp) ** 2
    pool = torch.log10((vv - vv @ P @ P.T).norm(dim=1) / vv.norm(dim=1)) + torch.log10((h - h @ Q @ Q.T).norm(dim=1) / h.norm(dim=1))
    return {"share": -share.scores(seqs), "span": spans.score(b.layout, seqs).double(), "own": rel[torch.arange(len(seqs)), torch.tensor(own)],
            "near": rel.min(1)[0], "pool": pool}


L = max(map(len, truth))
column = [[s[i] for s in truth if 0 < i < len(s) - 1] for i in range(L)]


def corrupt(s, k):
    s = list(s); inner = list(range(1, len(s) - 1))
    for p in rng.sample(inner, min(k, len(inner))):
        others = [t for t in column[p] if t != s[p]]
        if others:
            s[p] = rng.choice(others)
    return s


report = {"data": data, "tails": {}, "k": {}}
t0 = time.process_time()
for q in (0.0, 0.3, 0.6, 0.8):
    guess = [corrupt(s, round(q * (len(s) - 2))) for s in truth]
    wins = {}
    pairs, firsts, seconds, owners = [], [], [], []
    for _ in range(200):
        a, c = rng.sample(range(B), 2)
        n = min(len(guess[a]), len(guess[c])) - 1
        if n < 3:
            continue
        cut = rng.randrange(2, n)  # at least one content token in the head
        pairs.append((a, c))
        firsts += [guess[a][:cut] + guess[c][cut:], guess[c][:cut] + guess[a][cut:]]
        owners += [a, c]
    right = scores(guess, list(range(B)))
    swapped = scores(firsts, owners)  # own: each exchanged sentence against its head's owner
    # matched: targets assigned to the guesses by a Hungarian matching on the distances (no truth)
    rel = (torch.cdist(cls_states(guess), H) / H.norm(dim=1)[None]).numpy()
    pi = linear_sum_assignment(rel)[1]
    report.setdefault("matched_right", {})[q] = int((pi == list(range(B))).sum())
    right["matched"] = torch.tensor(rel[range(B), pi])
    hs = cls_states(firsts)
    swapped["matched"] = ((hs - H[torch.tensor(pi[owners])]).norm(dim=1) / H[torch.tensor(pi[owners])].norm(dim=1))
    # rematched: each configuration gets its own optimal matching (no status-quo bias): total cost
    base = float(rel[range(B), pi].sum())
    rs = (torch.cdist(hs, H) / H.norm(dim=1)[None]).numpy()
    rem = []
    for j, (a, c) in enumerate(pairs):
        R2 = rel.copy(); R2[a] = rs[2 * j]; R2[c] = rs[2 * j + 1]
        rr, cc = linear_sum_assignment(R2)
        rem.append(base < float(R2[rr, cc].sum()) - 1e-12)
    wins["rematched"] = round(sum(rem) / len(rem), 3)
    for k in right:
        r = torch.stack([right[k][a] + right[k][c] for a, c in pairs])
        w = swapped[k].view(-1, 2).sum(1)
        wins[k] = round(float((r < w).double().mean()), 3)
    report["tails"][q] = wins
    print("tails q", q, wins, "pairs", len(pairs), "matched right", report["matched_right"][q], flush=True)
ks = (0, 1, 2, 4, 8)
rows = {k: [] for k in ks}
for s_i, s in enumerate(truth):
    for k in ks:
        for _ in range(4):
            rows[k].append((s_i, corrupt(s, k)))
sc = {k: scores([g for _, g in rows[k]], [i for i, _ in rows[k]]) for k in ks}
for name in sc[0]:
    med = {k: round(float(sc[k][name].median()), 4) for k in ks}
    order = {}
    for k1, k2 in zip(ks[1:], ks[2:]):
        order[f"{k1}<{k2}"] = round(float((sc[k1][name] < sc[k2][name]).double().mean()), 3)
    report["k"][name] = {"median": med, "fewer_wrong_wins": order}
    print(name, "median per k", med, "fewer wrong wins", order)
report["cpu_s"] = round(time.process_time() - t0, 1)
json.dump(report, open(f"recipes/measured/large_batch_cls_s22/truth_ranking_{data}.json", "w"), indent=1)
