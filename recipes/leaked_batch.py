"""One dev batch as the ground-truth diagnosis recipes study it past the rank limit (#16): the
packaged MiniLM classifier's gradient of the batch, its true token ids, and every leaked token as a
candidate at every position, narrowed by the embedding gradients' placements. Diagnosis only: the
attacks never read the truth (`beyond_rank_settle.py`, `short_sentence_screen.py`)."""

from __future__ import annotations

from types import SimpleNamespace

import textleak
from textleak.attacks.exact.candidates import Candidates, vocabulary
from textleak.attacks.exact.sequences import occupants
from textleak.data import read_sentences
from textleak.text.layouts import layout_for
from textleak.text.leaks import token_positions
from textleak.text.models import load_text_model


def leaked_batch(data: str, batch_size: int, index: int, drop_shortest: int = 0) -> SimpleNamespace:
    """target, layout, grads, tok, truth (token ids per sentence), lengths and cands of dev batch
    `index`, less its `drop_shortest` shortest sentences."""
    target = load_text_model(None, task="classify")
    rows = [(t, y or 0) for t, y in read_sentences(data)][index * batch_size:(index + 1) * batch_size]
    if drop_shortest:
        ids = target.tokenizer([t for t, _ in rows])["input_ids"]
        gone = set(sorted(range(len(rows)), key=lambda i: len(ids[i]))[:drop_shortest])
        rows = [r for i, r in enumerate(rows) if i not in gone]
    cap = textleak.capture_gradients(target, [t for t, _ in rows], labels=[y for _, y in rows], seed=index)
    layout, grads, tok = layout_for(target.model), cap.gradients.gradients, target.tokenizer
    truth = [list(s) for s in cap.reference.token_ids]
    lengths = [len(s) for s in truth]
    vocab, _ = vocabulary(layout, grads, tok, "classify")
    pins = token_positions(layout, grads, vocab.tolist(), max(lengths), occupants(lengths))
    cands = Candidates([[(int(t), 0.0) for t in vocab.tolist()] for _ in range(max(lengths))],
                       {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}, pins=pins)
    return SimpleNamespace(target=target, layout=layout, grads=grads, tok=tok, truth=truth, lengths=lengths,
                           cands=cands)
