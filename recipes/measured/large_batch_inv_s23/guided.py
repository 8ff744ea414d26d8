"""Scratch (s23): gradient-guided descent onto [CLS] targets, many sentences of one length at once.
Each step: one forward/backward gives every (position, column candidate) change a first-order score; each
sentence's TOP best per position are evaluated exactly and the best kept; a stalled sentence then tries
every candidate at every position (a full sweep) before it stops."""
import torch


class Guided:
    def __init__(self, b, top=8):
        self.b, self.top = b, top
        self.W = b.layout.word_embeddings.weight.detach()
        self.base = b.layout.base
        self.evals = 0

    def dist(self, seqs, T):
        """T [S, H] per sequence (same length)."""
        ids = torch.tensor(seqs)
        with torch.no_grad():
            h = self.base(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0].double()
        self.evals += len(seqs)
        return (h - T).norm(dim=1) / T.norm(dim=1)

    def many(self, seqs, T, chunk=512):
        return torch.cat([self.dist(seqs[i:i + chunk], T[i:i + chunk]) for i in range(0, len(seqs), chunk)])

    def grads(self, seqs, T):
        ids = torch.tensor(seqs)
        E = self.W[ids].clone().requires_grad_(True)
        with torch.enable_grad():
            h = self.base(inputs_embeds=E, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0].double()
            loss = (((h - T) ** 2).sum(1) / (T ** 2).sum(1)).sum()
            G, = torch.autograd.grad(loss, E)
        self.evals += 3 * len(seqs)
        return G

    def run(self, seqs, T, steps=60, full=True):
        seqs = [list(s) for s in seqs]
        n = len(seqs[0]); P = range(1, n - 1)
        best = self.dist(seqs, T)
        live = list(range(len(seqs)))
        swept = set()
        for _ in range(steps):
            if not live:
                break
            G = self.grads([seqs[i] for i in live], T[live])
            trial, owner = [], []
            for j, i in enumerate(live):
                for p in P:
                    opts = self.b.options[p]
                    if not opts:
                        continue
                    o = torch.tensor(opts)
                    sc = (self.W[o] - self.W[seqs[i][p]]) @ G[j, p]
                    for k in torch.argsort(sc)[:self.top].tolist():
                        if opts[k] != seqs[i][p]:
                            trial.append(seqs[i][:p] + [opts[k]] + seqs[i][p + 1:]); owner.append(i)
            d = self.many(trial, T[owner])
            nxt = []
            for i in live:
                ks = [k for k, o in enumerate(owner) if o == i]
                k = min(ks, key=lambda k: float(d[k])) if ks else None
                if k is not None and float(d[k]) < float(best[i]) - 1e-12:
                    seqs[i], best[i] = trial[k], d[k]; nxt.append(i)
                elif full and i not in swept:
                    swept.add(i)
                    s, v = self.sweep(seqs[i], T[i], float(best[i]))
                    if v < float(best[i]):
                        seqs[i], best[i] = s, v; nxt.append(i); swept.discard(i)
            live = nxt
        return seqs, best

    def sweep(self, seq, t, best):
        n = len(seq)
        for p in range(1, n - 1):
            trial = [seq[:p] + [x] + seq[p + 1:] for x in self.b.options[p] if x != seq[p]]
            if not trial:
                continue
            d = self.many(trial, t[None].expand(len(trial), -1))
            k = int(d.argmin())
            if float(d[k]) < best:
                seq, best = trial[k], float(d[k])
        return seq, best
