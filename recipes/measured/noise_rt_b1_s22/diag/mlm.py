"""Scratch (ground truth, session 22): fine-tune MiniLM's top K encoder layers (+ the context head's
dense/LayerNorm/bias, tied embedding output frozen) for span-masked LM on the training splits, the
lower layers frozen and their outputs cached; held-out top-1/10/50 against the current head."""
import copy, random, resource, sys, time, json, os
import torch, torch.nn.functional as F
from textleak.text.models import load_text_model
from textleak.text.masked_prior import _spans, load_context_head
from textleak.text.prior import prior_files, training_texts

torch.set_num_threads(int(os.environ.get("THREADS", "1")))

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def split_sentences(tok, per_file, held=500, seed=0):
    """Same shuffle as masked_prior.training_sentences; train = first per_file (at most len-held),
    held-out = the last `held` of each shuffled file (never seen by the s16 head's 6000)."""
    rng, tr, he = random.Random(seed), [], []
    for path in prior_files():
        pick = [t for t in training_texts(path) if len(t.split()) >= 4]
        rng.shuffle(pick)
        tr += pick[:min(per_file, len(pick) - held)]
        he += pick[len(pick) - held:]
    return tok(tr)["input_ids"], tok(he)["input_ids"]

def chunks(seqs, mask_id, rng, size=64):
    """[(ids, attn, masked ids, (rows, cols), targets)] by length in chunks of `size`."""
    seqs = sorted((s[:64] for s in seqs if len(s) >= 4), key=len)
    out = []
    for a in range(0, len(seqs), size):
        ch = seqs[a:a + size]; L = max(map(len, ch))
        x = torch.zeros(len(ch), L, dtype=torch.long); am = torch.zeros_like(x); where = []
        for r, s in enumerate(ch):
            x[r, :len(s)] = torch.tensor(s); am[r, :len(s)] = 1
            for p in sorted(_spans(len(s), rng)):
                where.append((r, p, s[p])); x[r, p] = mask_id
        rows, cols, ys = zip(*where)
        out.append((x, am, torch.tensor(rows), torch.tensor(cols), torch.tensor(ys)))
    return out

class MLM(torch.nn.Module):
    """The encoder's top K layers (copied) over cached inputs + the head."""
    def __init__(self, target, head, K):
        super().__init__()
        self.base = target.model.bert; self.K = K
        n = len(self.base.encoder.layer)
        self.top = torch.nn.ModuleList(copy.deepcopy(self.base.encoder.layer[n - K:]))
        self.head = head; self.low = n - K
        self.dense, self.norm, self.bias = head.dense, head.norm, head.bias
    def lower(self, x, am):
        with torch.no_grad():
            return self.base(input_ids=x, attention_mask=am, output_hidden_states=True).hidden_states[self.low]
    def upper(self, h, am):
        ext = (1.0 - am[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.top:
            o = layer(h, attention_mask=ext); h = o[0] if isinstance(o, tuple) else o
        return h
    def logits(self, h):
        return self.head.logits(h)
    def log_probs(self, seq, groups):
        if not groups: return []
        x = torch.tensor([list(seq)] * len(groups))
        for r, g in enumerate(groups): x[r, list(g)] = self.head.mask_id
        am = torch.ones_like(x)
        with torch.no_grad():
            h = self.upper(self.lower(x, am), am)
            return [torch.log_softmax(self.logits(h[r, list(g)]), -1) for r, g in enumerate(groups)]

def evaluate(model, held):
    ranks = []
    with torch.no_grad():
        for x, am, rows, cols, ys in held:
            h = model.upper(model.lower(x, am), am)[rows, cols]
            lg = model.logits(h)
            ranks.append((lg > lg.gather(1, ys[:, None])).sum(1))
    r = torch.cat(ranks).float()
    return {"n": len(r), "top1": float((r < 1).float().mean()), "top10": float((r < 10).float().mean()),
            "top50": float((r < 50).float().mean()), "median": float(r.median())}

def main():
    K, per_file, epochs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    lr_layers, lr_head = float(sys.argv[4]), float(sys.argv[5]); out = sys.argv[6]
    t = load_text_model(None, task="classify"); tok = t.tokenizer
    head = load_context_head(t)  # the s16 head: warm start, and the K=0 reference
    model = MLM(t, head, K)
    tr, he = split_sentences(tok, per_file)
    held = chunks(he, tok.mask_token_id, random.Random(1))
    c0, w0 = cpu(), time.time()
    ref = evaluate(MLM(t, head, 0), held) if K == 0 or os.environ.get("REF") else None
    print("reference (current head):", ref, flush=True)
    if K == 0: return
    print(f"K={K} train sentences {len(tr)} held {len(he)}; at start: {evaluate(model, held)}", flush=True)
    params_l = [p for p in model.top.parameters()]
    params_h = head.parameters()
    for p in params_l + params_h: p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": params_l, "lr": lr_layers}, {"params": params_h, "lr": lr_head}])
    for ep in range(epochs):
        c1 = cpu()
        data = chunks(tr, tok.mask_token_id, random.Random(100 + ep))  # fresh masking each epoch
        cache = [(model.lower(x, am).half(), am, rows, cols, ys) for x, am, rows, cols, ys in data]
        print(f"epoch {ep}: cached lower states ({cpu() - c1:.0f} CPU s)", flush=True)
        if ep == 0:
            steps = epochs * len(cache)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, [lr_layers, lr_head], total_steps=steps, pct_start=0.1)
        order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(ep))
        tot = 0.0
        for i, b in enumerate(order.tolist()):
            h0, am, rows, cols, ys = cache[b]
            h = model.upper(h0.float(), am)[rows, cols]
            loss = F.cross_entropy(model.logits(h), ys)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step(); tot += float(loss)
            if i % 100 == 99:
                print(f"  step {i+1}/{len(cache)} loss {tot/100:.3f} ({cpu() - c1:.0f} CPU s, {time.time()-w0:.0f} s wall)", flush=True); tot = 0.0
        for p in params_l + params_h: p.requires_grad_(False)
        res = evaluate(model, held)
        for p in params_l + params_h: p.requires_grad_(True)
        print(f"epoch {ep} held-out: {res} ({cpu() - c0:.0f} CPU s total, load {os.getloadavg()[0]:.1f})", flush=True)
    torch.save({"K": K, "top": model.top.state_dict(), "head": head.state()}, out)
    print(json.dumps({"K": K, "per_file": per_file, "epochs": epochs, "lr": [lr_layers, lr_head], "held": res,
                      "reference": ref, "cpu_s": cpu() - c0, "wall_s": time.time() - w0}))

if __name__ == "__main__":
    main()
