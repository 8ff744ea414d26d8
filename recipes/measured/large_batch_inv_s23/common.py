"""Scratch (s23) shared setup: dev batch 0 of 64, the leaked columns, [CLS] states. Truth only to score."""
import sys, random, torch
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.attacks.bag_parts import columns
from textleak.attacks.exact.candidates import vocabulary
from textleak.attacks.exact.sequences import occupants
from textleak.text.leaks import token_positions
from textleak.text.leaks.residuals import padded


def setup(data):
    b = leaked_batch(data, 64, 0)
    b.specials = {b.tok.cls_token_id, b.tok.sep_token_id, b.tok.pad_token_id}
    vocab = vocabulary(b.layout, b.grads, b.tok, "classify")[0].tolist()
    b.pins = token_positions(b.layout, b.grads, vocab, max(b.lengths), occupants(b.lengths))
    b.cols = columns(b.grads[b.layout.word_embedding_name], b.pins, vocab, b.lengths, b.specials)
    b.options = [sorted(t for t in a if t not in b.specials) for a in b.cols.allowed]
    return b


def states(b, seqs, chunk=256):
    out = []
    for i in range(0, len(seqs), chunk):
        ids, mask = padded(seqs[i:i + chunk], b.layout.device)
        with torch.no_grad():
            out.append(b.layout.hidden_states(ids, mask)[:, 0].double())
    return torch.cat(out)


def random_seq(b, n, rng):
    return [b.tok.cls_token_id] + [rng.choice(b.options[p]) for p in range(1, n - 1)] + [b.tok.sep_token_id]
