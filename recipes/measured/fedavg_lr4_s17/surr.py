"""Scratch (ground truth): does a first-order change of the box misfit (HotFlip-style: d misfit / d word embedding
at each position, dotted with E[t'] - E[t]) rank the true token first where the full misfit does?
Setting: the true batch with one token of one sentence replaced; every (position, vocab token) of that sentence scored."""
import sys, time, random, torch, textleak
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
ntrials = int(sys.argv[3]) if len(sys.argv) > 3 else 8
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
print("vocab", len(vocab), "lengths", [len(s) for s in seqs], "true in vocab", all(t in set(vocab.tolist()) for s in seqs for t in s))
E = lm.word_embeddings.weight.detach()

def surrogate(seq, label, r):
    """[L, V] first-order change of <r, g(seq)> for each position and vocab token."""
    model = lm.model; model.eval()
    ids = torch.tensor([seq]); y = torch.tensor([label])
    kw = lm.inputs(ids)
    kw.pop("input_ids")
    e = E[ids].clone().requires_grad_(True)
    with torch.enable_grad():
        loss = model(inputs_embeds=e, **kw, labels=y).loss
        gs = torch.autograd.grad(loss, box.params, create_graph=True)
        phi = sum((g.flatten().double() * rr).sum() for g, rr in zip(gs, r))
        de, = torch.autograd.grad(phi, e)
    de = de[0].double()  # [L, H]
    V = E[vocab].double()  # [V, H]
    return de @ V.T - (de * E[ids[0]].double()).sum(-1, keepdim=True)  # [L, V]

random.seed(0)
sizes = [p.numel() for p in box.params]
for trial in range(ntrials):
    b = random.randrange(len(seqs)); p = random.randrange(1, len(seqs[b]) - 1)
    wrong = random.choice([t for t in vocab.tolist() if t != seqs[b][p]])
    guess = [list(s) for s in seqs]; guess[b][p] = wrong
    t0 = time.process_time()
    own = [box.gradient(s, y) for s, y in zip(guess, labels)]
    T = sum(own) / len(own)
    m0 = box.misfit(T)
    d = T - box.U
    rflat = 2 * torch.relu(d.abs() - box.half) * d.sign() / len(own)
    r = list(torch.split(rflat, sizes))
    t1 = time.process_time()
    S = surrogate(guess[b], labels[b], r)  # [L, V]
    t2 = time.process_time()
    S[0] = S[-1] = float("inf")
    vi = vocab.tolist().index(seqs[b][p])
    flat = S.flatten()
    order = flat.argsort()
    rank_true = int((flat < flat[p * len(vocab) + vi]).sum()) + 1
    pmin = S.min(1).values
    rank_pos = int((pmin < pmin[p]).sum()) + 1
    # full sweep of the true position: where does the true token rank among the vocab by full misfit there?
    fullp = []
    for v in vocab.tolist():
        s2 = list(guess[b]); s2[p] = v
        g = box.gradient(s2, labels[b]); fullp.append(box.misfit(T + (g - own[b]) / len(own)))
    fullp = torch.tensor(fullp); rank_full = int((fullp < fullp[vi]).sum()) + 1
    sp = S[p]; rank_surr_at_p = int((sp < sp[vi]).sum()) + 1
    box.width = len(vocab); opts = box.options(len(guess[b]))[p].tolist(); box.width = 16
    rank_l0 = opts.index(seqs[b][p]) + 1
    print(f"   layer-0 option rank of the true token {rank_l0} (token repair width 16); surrogate rank {rank_surr_at_p}: in the union of both top-16: {rank_l0 <= 16 or rank_surr_at_p <= 16}")
    print(f"   position rank by surrogate min {rank_pos}/{len(S)-2}; at the true position: true token full rank {rank_full}, surrogate rank {rank_surr_at_p} of {len(vocab)}")
    # full misfit for the top-16 surrogate moves and the true fix
    full = []
    for idx in order[:16].tolist():
        q, v = divmod(idx, len(vocab))
        s2 = list(guess[b]); s2[q] = int(vocab[v])
        g = box.gradient(s2, labels[b])
        full.append((box.misfit(T + (g - own[b]) / len(own)), q, int(vocab[v])))
    t3 = time.process_time()
    best = min(full)
    print(f"trial {trial}: sent {b} len {len(seqs[b])} pos {p}: misfit {m0:.4g}; surrogate rank of the true fix {rank_true}/{flat.isfinite().sum()}; "
          f"best of top16 full {best[0]:.4g} at ({best[1]},{best[2]}) true fix=({p},{seqs[b][p]}) -> {best[1:]==(p, seqs[b][p])}; "
          f"cpu grads {t1-t0:.2f} surr {t2-t1:.2f} 16 full {t3-t2:.2f}", flush=True)
