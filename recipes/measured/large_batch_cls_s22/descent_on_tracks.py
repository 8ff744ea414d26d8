"""Scratch (s22): `bags`' assembly of the whole batch (no search), then `TargetDescent` onto the pooled
states, under a budget (argv[2] s): ROUGE-1/2 and exact before and after, CPU s. Truth read only to score."""
import sys, json, time, resource, torch
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.attacks.bag_parts import assemble, columns
from textleak.attacks.beyond_rank_targets import TargetDescent
from textleak.attacks.exact.candidates import vocabulary
from textleak.attacks.exact.sequences import occupants
from textleak.core import budget
from textleak.metrics import score_text_batch
from textleak.text.leaks import token_positions
from textleak.text.prior import load_prior

data = sys.argv[1] if len(sys.argv) > 1 else "cola"
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 300
b = leaked_batch(data, 64, 0)
specials = {b.tok.cls_token_id, b.tok.sep_token_id, b.tok.pad_token_id}
vocab = vocabulary(b.layout, b.grads, b.tok, "classify")[0].tolist()
pins = token_positions(b.layout, b.grads, vocab, max(b.lengths), occupants(b.lengths))
cols = columns(b.grads[b.layout.word_embedding_name], pins, vocab, b.lengths, specials)
tracks = assemble(cols, 64, load_prior("bigram", b.tok), b.tok.cls_token_id, b.tok.sep_token_id)
ref = [b.tok.decode(s[1:-1]) for s in b.truth]
score = lambda tr: score_text_batch([b.tok.decode(s[1:-1]) for s in tr], ref, tr, b.truth)["mean"]  # noqa: E731
before = score(tracks)
c0, t0 = time.process_time(), time.time()
with budget.time_budget(secs):
    d = TargetDescent(b.layout, b.grads, 64, specials)
    out = d.run(tracks, [], cols.allowed)
after = score(out)
rec = {"data": data, "budget_s": secs, "before": {k: before[k] for k in ("rouge1", "rouge2", "exact_match")},
       "after": {k: after[k] for k in ("rouge1", "rouge2", "exact_match")}, "report": d.report,
       "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.time() - t0, 1),
       "load": open("/proc/loadavg").read().split()[:3]}
print(json.dumps(rec))
json.dump(rec, open(f"recipes/measured/large_batch_cls_s22/descent_on_tracks_{data}_{int(secs)}.json", "w"), indent=1)
