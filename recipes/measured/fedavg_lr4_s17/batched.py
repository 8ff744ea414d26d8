"""Scratch: many one-sentence Q/K/V gradients from one forward/backward of a batch of same-length trials
(per-sample weight gradients from the layers' inputs and output gradients), against BoxRepair.gradient."""
import sys, time, torch, textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.update_sim import update_facts
from textleak.attacks.update import midpoint_model
from textleak.attacks.update_rounding import RoundingFits
from textleak.attacks.update_repair import BoxRepair
from textleak.attacks.exact.candidates import vocabulary
from textleak.text.leaks.noise import SpanReader
torch.set_num_threads(1)
data, spec = sys.argv[1], sys.argv[2]
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)][0:4]
cap = textleak.capture_gradients(target, [t for t,_ in rows], labels=[y for _,y in rows], seed=0, defence=spec)
grads = cap.gradients.gradients; facts = update_facts(cap.gradients.metadata)
layout = layout_for(target.model)
lm = layout_for(midpoint_model(target.model, grads, facts))
vocab, _ = vocabulary(lm, grads, target.tokenizer, "classify")
seqs = [list(s) for s in cap.reference.token_ids]; labels = [y for _, y in rows]
fits = RoundingFits(layout, grads, facts.lr, facts.steps)
reader = SpanReader([len(s) for s in seqs], True)
span0 = fits.span(0, reader(layout, grads, 0), reader.bound(0))
box = BoxRepair(lm, fits, span0, vocab)
mods = [m for k in range(lm.num_layers) for m in (lm.block(k).query, lm.block(k).key, lm.block(k).value)]
assert [p for p in box.params] == [m.weight for m in mods]

def batched(trials, label):
    model = lm.model; model.eval()
    ids = torch.tensor(trials); y = torch.full((len(trials),), int(label))
    xs, outs = [], []
    hs = [m.register_forward_hook(lambda mod, inp, out: (xs.append(inp[0]), outs.append(out)) and None) for m in mods]
    try:
        with torch.enable_grad():
            logits = model(**lm.inputs(ids)).logits
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            deltas = torch.autograd.grad(loss, outs)
    finally:
        for h in hs: h.remove()
    return [torch.einsum("nlo,nli->noi", d, x) for d, x in zip(deltas, xs)]  # per param [N, out, in]

b = 2; seq = seqs[b]; p = 10
trials = [seq[:p] + [t] + seq[p+1:] for t in vocab.tolist()[:16]]
t0 = time.process_time(); ref = [box.gradient(t, labels[b]) for t in trials]; t1 = time.process_time()
G = batched(trials, labels[b]); t2 = time.process_time()
flat = torch.cat([g.flatten(1) for g in G], 1).double()
err = max(float((flat[i] - ref[i]).norm() / ref[i].norm()) for i in range(len(trials)))
print(f"16 trials, len {len(seq)}: one by one {t1-t0:.2f} CPU s, batched {t2-t1:.2f} CPU s, max rel diff {err:.2e}")
for n in (4, 8, 32, 64):
    tr = [seq[:p] + [t] + seq[p+1:] for t in (vocab.tolist()*2)[:n]]
    t1 = time.process_time(); batched(tr, labels[b]); t2 = time.process_time()
    print(f"  batch {n}: {t2-t1:.2f} CPU s ({(t2-t1)/n:.3f} per trial)")
T = sum(box.gradient(s, y) for s, y in zip(seqs, labels)) / 4
g = ref[0]; own = ref[1]
t1 = time.process_time()
for _ in range(20): box.misfit(T + (g - own) / 4)
t2 = time.process_time()
print(f"entries {box.U.numel()}; misfit of a trial (update + misfit) {(t2-t1)/20:.4f} CPU s")
t1 = time.process_time()
for t in trials[:8]: box.gradient(t, labels[b])
t2 = time.process_time()
print(f"one-by-one gradient alone {(t2-t1)/8:.4f} CPU s")
