"""Scratch (ground truth): load RT sentence i's noisy capture and a _Guess to score hypotheses."""
import difflib, json, math, sys, time
import torch
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _Batch, _Guess

torch.set_num_threads(1)
_T = None
def target():
    global _T
    if _T is None:
        _T = load_text_model(None, task="classify")
    return _T

def setup(data, i, spec="noise:1e-06"):
    t = target()
    rows = [(s, y or 0) for s, y in read_sentences(data)]
    text, y = rows[i]
    cap = textleak.capture_gradients(t, [text], labels=[y], seed=i, defence=spec)
    tok = t.tokenizer
    truth = tok(text)["input_ids"]
    return t, cap, tok, truth, y

def guess_for(t, cap, seq, y, weighted=False):
    batch = _Batch(layout_for(t.model), cap.gradients.gradients, [seq], [y], None)
    return _Guess(batch, 0, weighted)

def J(g, seqs, chunk=64):
    out = []
    for k in range(0, len(seqs), chunk):
        out += g.score(seqs[k:k+chunk])[0].tolist()
    return out

def runs(a, b):
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return [op for op in sm.get_opcodes() if op[0] != "equal"]
