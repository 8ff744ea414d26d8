"""Scratch (ground truth only counts), session 24: the new move itself (`Moves.blocks`, K context candidates
per slot, 8 pairs per window) applied repeatedly on J_w (weights at the guess) from settled guesses
(stdin as blockset.py; argv[1] = K, argv[2] = most steps): per step what it changed (single / pair,
the tokens, true or not), J_w gain, and the wrong positions left."""
import os, sys, json, resource
from types import SimpleNamespace
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag"))
from ranks import *  # noqa
from textleak.attacks.evidence import ContextCandidates
from textleak.attacks.likelihood_moves import Moves

K, STEPS = int(sys.argv[1]), int(sys.argv[2])
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

for line in sys.stdin:
    label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
    t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
    seq = tok(text)["input_ids"]
    if len(seq) != len(truth): continue
    word = lay.word_embedding_name
    g = guess_for(t, cap, seq, y, weighted=True)
    search = SimpleNamespace(_sure=None, _context=ContextCandidates(head, rs, banned, 4), blocks=K, block_pairs=8,
                             rows=2, _prior=None)
    moves = Moves(search, [[v] for v in seq], banned, word)
    inner = range(1, len(seq) - 1)
    wrong0 = sum(a != b for a, b in zip(seq, truth))
    steps, c0 = [], cpu()
    for _ in range(STEPS):
        m = moves.blocks(g, inner)
        if m is None: break
        new, Jn, e = m
        diff = [p for p in inner if new[p] != g.x[p]]
        steps.append(dict(at=diff, tok=tok.convert_ids_to_tokens([new[p] for p in diff]),
                          true=[new[p] == truth[p] for p in diff], was_true=[g.x[p] == truth[p] for p in diff],
                          dJw=round(Jn - g.best, 4), wrong=sum(a != b for a, b in zip(new, truth))))
        g.x, g.best, g.e = new, Jn, e
    print(json.dumps(dict(label=label, i=i, K=K, wrong0=wrong0, wrong=sum(a != b for a, b in zip(g.x, truth)),
                          cpu=round(cpu() - c0, 1), steps=steps)), flush=True)
