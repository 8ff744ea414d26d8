"""Scratch (s25): at a unit's end state (its recovered texts re-tokenised; a length mismatch trimmed or
padded with "."), for each sentence with the others at their guesses, at each wrong inner position:
the true token's rank by the context score (`evidence.context_candidates`: masked LM with the position
masked alone + matched filter + rows, as `ContextCandidates.sweep` ranks), by the row evidence (the
batch search's pool: `candidates`, per_position 10) and by the matched filter; and whether that single
true token raises J_w / J of the sentence (the batch search's landscapes). Gradients as fl_defences
captures them (seed = batch index, noise:1e-6), true labels.
usage: python diag_ranks.py UNITS.jsonl OUT.json"""
import json, math, os, resource, sys
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.text.masked_prior import context_head
from textleak.attacks.evidence import row_scores, special_ids, zscores
from textleak.attacks.likelihood_state import _Batch, _Guess

B = 4
target = load_text_model(None, task="classify")
tok = target.tokenizer
layout = layout_for(target.model)
word, pos = layout.word_embedding_name, layout.position_embedding_name
head, why = context_head(target)
assert head is not None, why
dot = tok.convert_tokens_to_ids(".")
result = []
for unit, line in enumerate(open(sys.argv[1])):
    u = json.loads(line)
    index = u["index"]
    rows = [(t, y or 0) for t, y in read_sentences(u["data"])][index * B:(index + 1) * B]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence="noise:1e-06")
    G = cap.gradients.gradients
    truth = [tok(t)["input_ids"] for t in texts]
    guess = []
    for t, r in zip(u["recovered"], truth):
        g = tok(t)["input_ids"][1:-1][: len(r) - 2]
        guess.append([r[0]] + g + [dot] * (len(r) - 2 - len(g)) + [r[-1]])
    banned = special_ids(layout, tok)
    W, P = G[word].double(), G[pos].double()
    scores = row_scores(W, P, max(len(r) for r in truth), banned)
    batch = _Batch(layout, G, guess, labels)
    for i in range(B):
        for weighted in (True, False):
            g = _Guess(batch, i, weighted)
            wrong = [p for p in range(1, len(truth[i]) - 1) if guess[i][p] != truth[i][p]]
            trials = [g.x[:p] + [truth[i][p]] + g.x[p + 1:] for p in wrong]
            J = g.score(trials)[0].tolist() if trials else []
            if not weighted:
                for p, j in zip(wrong, J):
                    result[-len(wrong) + wrong.index(p)]["J_gain"] = j - g.best
                continue
            lps = head.log_probs(g.x, [[p] for p in wrong])
            for p, lp, j in zip(wrong, lps, J):
                v = truth[i][p]
                m = g.T[word] @ g.e[p]
                ctx = lp[0].double() + zscores(m, banned) + 0.5 * zscores(scores[:, p], banned)
                rank = lambda s: int((s.masked_fill(banned, -math.inf) > s[v]).sum())
                result.append({"key": u["key"], "unit": unit, "sentence": i, "position": p, "token": tok.convert_ids_to_tokens(v),
                               "guess": tok.convert_ids_to_tokens(g.x[p]), "context_rank": rank(ctx),
                               "row_rank": rank(scores[:, p]), "matched_rank": rank(m.double()),
                               "lm_rank": rank(lp[0].double()), "Jw_gain": j - g.best})
    res = [r for r in result if r["unit"] == unit]
    n = len(res)
    tops = {k: [sum(r[f"{k}_rank"] < t for r in res) for t in (4, 32, 64, 1000)] for k in ("context", "row", "matched", "lm")}
    print(u["key"], f"R1 {u['rouge1']:.3f} wrong positions {n};", "top 4/32/64/1000:",
          "; ".join(f"{k} {v}" for k, v in tops.items()),
          f"| single true token raises J_w at {sum(r['Jw_gain'] > 0 for r in res)}, J at {sum(r['J_gain'] > 0 for r in res)};"
          f" both & context top64: {sum(r['Jw_gain'] > 0 and r['context_rank'] < 64 for r in res)}")
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"wrong": result, "cpu_s": ru.ru_utime + ru.ru_stime, "load": os.getloadavg()[0]}, open(sys.argv[2], "w"), indent=0)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
