"""Scratch (s25): from a unit's end state (recovered texts re-tokenised, as diag_ranks), every shifted span
exchange between two sentences: i's tokens at a..a+w-1 and j's at b..b+w-1 swapped (a != b: a stretch
moves to another sentence AND another place; s22's `block` swaps keep a == b), scored exactly as
`likelihood_batch._swap_pair` does (J_i gain with j fixed, then J_j gain with i's change made; the sum is
the batch log-likelihood change, printed in nats). Reports how many raise the likelihood and the true tokens
(right sentence and position) each of the best adds; then the same for same-position spans (a == b).
usage: python diag_shift.py UNITS.jsonl OUT.json [WMAX]"""
import json, os, resource, sys
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_batch import BatchLikelihoodSearch
from textleak.attacks.likelihood_state import _Batch

B = 4
wmax = int(sys.argv[3]) if len(sys.argv) > 3 else 6
target = load_text_model(None, task="classify")
tok = target.tokenizer
layout = layout_for(target.model)
dot = tok.convert_tokens_to_ids(".")
NATS = 1 / (2 * (B * 1e-3) ** 2)  # J units -> nats (sigma from the recipe's 1e-6)


def gain(batch, i, trials):
    return [g * NATS for g in BatchLikelihoodSearch._gain(batch, i, trials)]


out = []


def transplant(batch, i, j, spans, trials, found, guess, labels, base_right):
    """j's stretch b..b+w-1 moved into i at a (i's tokens there dropped), j's stretch backfilled by "."
    (`trials` are i's first steps); the 8 best first steps completed."""
    first = gain(batch, i, trials)
    for k in sorted(range(len(spans)), key=lambda k: -first[k])[:8]:
        a, b, w = spans[k]
        s = list(guess[j]); s[b:b + w] = [dot] * w
        batch.set(i, trials[k], labels[i])
        g2 = gain(batch, j, [s])[0]
        batch.set(i, guess[i], labels[i])
        seqs = [list(x) for x in guess]; seqs[i], seqs[j] = trials[k], s
        found.append({"i": i, "j": j, "a": a, "b": b, "w": w, "gain": first[k] + g2,
                      "true_added": right(seqs) - base_right,
                      "moved": tok.decode(guess[j][b:b + w]) + " -> over " + tok.decode(guess[i][a:a + w])})


for line in open(sys.argv[1]):
    u = json.loads(line)
    index = u["index"]
    rows = [(t, y or 0) for t, y in read_sentences(u["data"])][index * B:(index + 1) * B]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence="noise:1e-06")
    truth = [tok(t)["input_ids"] for t in texts]
    guess = []
    for t, r in zip(u["recovered"], truth):
        g = tok(t)["input_ids"][1:-1][: len(r) - 2]
        guess.append([r[0]] + g + [dot] * (len(r) - 2 - len(g)) + [r[-1]])
    right = lambda seqs: sum(s[p] == r[p] for s, r in zip(seqs, truth) for p in range(1, len(r) - 1))
    batch = _Batch(layout, cap.gradients.gradients, guess, labels)
    base_right = right(guess)
    for i in range(B):  # one sentence set to its truth, the others at their guesses
        print(u["key"], f"sentence {i} set to its truth: J_i gain {gain(batch, i, [truth[i]])[0]:.0f}")
    for shifted in ("transplant", True, False):
        found = []
        for i in range(B):
            for j in range(B):
                if i == j or (not shifted and j < i):
                    continue
                Li, Lj = len(guess[i]) - 2, len(guess[j]) - 2
                spans = [(a, b, w) for w in range(1, min(wmax, Li, Lj) + 1) for a in range(1, Li - w + 2)
                         for b in range(1, Lj - w + 2) if shifted == "transplant" or (a != b) == shifted]
                trials = []
                for a, b, w in spans:
                    t = list(guess[i]); t[a:a + w] = guess[j][b:b + w]; trials.append(t)
                if shifted == "transplant":
                    transplant(batch, i, j, spans, trials, found, guess, labels, right(guess))
                    continue
                first = gain(batch, i, trials)
                for k in sorted(range(len(spans)), key=lambda k: -first[k])[:6]:
                    a, b, w = spans[k]
                    t, s = trials[k], list(guess[j])
                    s[b:b + w] = guess[i][a:a + w]
                    batch.set(i, t, labels[i])
                    g2 = gain(batch, j, [s])[0]
                    batch.set(i, guess[i], labels[i])
                    seqs = [list(x) for x in guess]; seqs[i], seqs[j] = t, s
                    found.append({"i": i, "j": j, "a": a, "b": b, "w": w, "gain": first[k] + g2,
                                  "true_added": right(seqs) - base_right,
                                  "moved": tok.decode(guess[i][a:a + w]) + " <-> " + tok.decode(guess[j][b:b + w])})
        found.sort(key=lambda f: -f["gain"])
        up = [f for f in found if f["gain"] > 0]
        print(u["key"], shifted if shifted == "transplant" else "shifted" if shifted else "same-position", f"R1 {u['rouge1']:.3f}: completed {len(found)},"
              f" raise the likelihood {len(up)}, of those adding true tokens {sum(f['true_added'] > 0 for f in up)},"
              f" losing {sum(f['true_added'] < 0 for f in up)}")
        for f in up[:6]:
            print("   ", {k: (round(v) if isinstance(v, float) else v) for k, v in f.items()})
        out.append({"key": u["key"], "shifted": shifted, "found": found})
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"out": out, "cpu_s": ru.ru_utime + ru.ru_stime, "load": os.getloadavg()[0]}, open(sys.argv[2], "w"), indent=0)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
