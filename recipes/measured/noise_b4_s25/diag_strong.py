"""Scratch (s25): the strong rows (`likelihood_batch.strong_rows`, z > 5) of a unit's batch and where its end
state (recovered texts re-tokenised) holds each: at its row position in its owner, at its row position in
another sentence, elsewhere (another position), or nowhere.
usage: python diag_strong.py UNITS.jsonl"""
import json, math, sys
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.evidence import row_scores, special_ids
from textleak.attacks.likelihood_batch import strong_rows

B = 4
target = load_text_model(None, task="classify")
tok = target.tokenizer
layout = layout_for(target.model)
for line in open(sys.argv[1]):
    u = json.loads(line)
    index = u["index"]
    rows = [(t, y or 0) for t, y in read_sentences(u["data"])][index * B:(index + 1) * B]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence="noise:1e-06")
    G = cap.gradients.gradients
    truth = [tok(t)["input_ids"] for t in texts]
    guess = [tok(t)["input_ids"] for t in u["recovered"]]
    W, P = G[layout.word_embedding_name].double(), G[layout.position_embedding_name].double()
    strong = strong_rows(row_scores(W, P, max(map(len, truth)), special_ids(layout, tok)), W, P, math.sqrt(1e-6), 5.0)
    counts = {"owner": 0, "other": 0, "shifted": 0, "nowhere": 0, "no owner": 0}
    out = []
    for v, p, z in strong:
        owners = [i for i, s in enumerate(truth) if p < len(s) and s[p] == v]
        at = [i for i, s in enumerate(guess) if p < len(s) and s[p] == v]
        k = "no owner" if not owners else "owner" if set(owners) & set(at) else "other" if at else \
            "shifted" if any(v in s for s in guess) else "nowhere"
        counts[k] += 1
        out.append(f"{tok.convert_ids_to_tokens(v)}@{p}(z{z:.0f},{k})")
    print(u["key"], f"R1 {u['rouge1']:.3f} strong {len(strong)}:", counts, " ".join(out))
