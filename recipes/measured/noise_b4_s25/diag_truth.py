"""Scratch (s25): is one sentence's truth reachable by a per-sentence climb? From a unit's end state
(recovered texts re-tokenised, as diag_ranks), each sentence set to its truth with the others at (a) their
guesses, (b) their truths, (c) fillers ("."): the change of J_i (nats: / 2 (B sigma)^2, sigma from
the recipe's 1e-6) and of J_w (the layer-weighted landscape the climbs use first; its own units, sign only).
usage: python diag_truth.py UNITS.jsonl"""
import json, os, resource, sys
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _Batch, _Guess

B, SIG = 4, 1e-3
target = load_text_model(None, task="classify")
tok = target.tokenizer
layout = layout_for(target.model)
dot = tok.convert_tokens_to_ids(".")
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
    fill = [[r[0]] + [dot] * (len(r) - 2) + [r[-1]] for r in truth]
    for name, others in (("guesses", guess), ("truths", truth), ("fillers", fill)):
        for i in range(B):
            seqs = [list(s) for s in others]
            seqs[i] = guess[i]
            batch = _Batch(layout, cap.gradients.gradients, seqs, labels)
            out = []
            for weighted in (False, True):
                g = _Guess(batch, i, weighted)
                d = float(g.score([truth[i]])[0][0]) - g.best
                out.append(d / (2 * (B * SIG) ** 2) if not weighted else d)
            print(u["key"], f"others at {name}: sentence {i} guess -> truth: J {out[0]:+.0f} nats, J_w {out[1]:+.3g}")
ru = resource.getrusage(resource.RUSAGE_SELF)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
