"""Scratch (s22): disaggregate the pooler gradient into the 64 per-sentence [CLS] states without the truth.

dW_p / (w_0 - w_1) = sum_s e_s v(h_s) h_s^T, v(h) = 1 - tanh(W_p h + b_p)^2: a true h_s lies in the row
space (rank B) and v(h_s) in the column space. Levenberg-Marquardt in the B coefficients of h in the row
space on [v(h) off the column space (H - B equations); LayerNorm shape of h (mean 0, unit variance of
(h - beta) / gamma)], started from the [CLS] states of random sentences drawn from the leaked candidates
per position (declared lengths), deduplicated. The truth is read only to score the result."""
import sys, json, random, time, torch
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.text.leaks.residuals import padded

data = sys.argv[1] if len(sys.argv) > 1 else "cola"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 512
LNW = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
rng = random.Random(0)
torch.manual_seed(0)
b = leaked_batch(data, 64, 0)
m, B = b.target.model, len(b.lengths)
c0 = time.process_time()
Wp, bp = m.bert.pooler.dense.weight.double().detach(), m.bert.pooler.dense.bias.double().detach()
d = (m.classifier.weight[0] - m.classifier.weight[1]).double().detach()
ln = m.bert.encoder.layer[-1].output.LayerNorm
gam, bet = ln.weight.double().detach(), ln.bias.double().detach()
keep = gam.abs() > 1e-3 * gam.abs().max()
M = b.grads["bert.pooler.dense.weight"].double() / d[:, None]
U, S, Vh = torch.linalg.svd(M)
P, Q = U[:, :B], Vh[:B].T
gk, bk = gam[keep], bet[keep]


def restrict(Qb, Cb):
    """Set the search space: h = Qb a, v(h) off the complement basis Cb."""
    global Q, C, WQ, Qk
    Q, C, WQ, Qk = Qb, Cb, Wp @ Qb, Qb[keep]


restrict(Q, U[:, B:])


def rj(a):
    z = torch.tanh(a @ WQ.T + bp)
    vv = 1 - z ** 2
    r1 = vv @ C
    J1 = torch.einsum("hc,nh,hk->nck", C, -2 * z * vv, WQ)
    n = (a @ Qk.T - bk) / gk                     # [N, K]
    K = n.shape[1]
    dn = Qk / gk[:, None]                         # [K, 64]
    r2 = torch.stack([n.mean(1), (n ** 2).mean(1) - 1], 1) * LNW * 1e-3
    J2 = torch.stack([dn.mean(0).expand(len(a), -1), 2 * (n @ dn) / K], 1) * LNW * 1e-3
    return torch.cat([r1, r2], 1), torch.cat([J1, J2], 1)


def lm(a, iters=80, lam=1e-3):
    lam = torch.full((len(a),), lam, dtype=torch.double)
    r, J = rj(a); cost = (r ** 2).sum(1)
    for _ in range(iters):
        JtJ = J.transpose(1, 2) @ J; g = (J.transpose(1, 2) @ r[..., None])[..., 0]
        diag = torch.diagonal(JtJ, dim1=1, dim2=2)
        step = torch.linalg.solve(JtJ + torch.diag_embed(lam[:, None] * diag + 1e-15), -g[..., None])[..., 0]
        rn, Jn = rj(a + step); cn = (rn ** 2).sum(1)
        ok = cn < cost
        a = torch.where(ok[:, None], a + step, a); r = torch.where(ok[:, None], rn, r)
        J = torch.where(ok[:, None, None], Jn, J); cost = torch.where(ok, cn, cost)
        lam = torch.where(ok, lam / 3, lam * 4)
    return a, r


def random_sentences(n):
    out = []
    for _ in range(n):
        L = rng.choice(b.lengths)
        out.append([b.tok.cls_token_id] + [rng.choice(b.cands.free(p, L)) for p in range(1, L - 1)] + [b.tok.sep_token_id])
    return out


def cls_states(seqs, chunk=128):
    out = []
    for i in range(0, len(seqs), chunk):
        ids, mask = padded(seqs[i:i + chunk])
        with torch.no_grad():
            out.append(m.bert(ids, attention_mask=mask).last_hidden_state[:, 0].double())
    return torch.cat(out)




def vstate(h):
    return 1 - torch.tanh(h @ Wp.T + bp) ** 2


def deflated(found):
    """Row and column spaces of the terms not yet found (exact given the found h's): the part of M on the
    row-space directions orthogonal to the found h's has for columns the missing v's, and vice versa."""
    k = B - len(found)
    Hf = torch.stack(found)
    Kr = torch.linalg.svd(Hf @ Q0, full_matrices=True)[2][len(found):].T      # [B, k] in row coords
    Kc = torch.linalg.svd(vstate(Hf) @ P0, full_matrices=True)[2][len(found):].T
    Pn = torch.linalg.svd(M @ Q0 @ Kr, full_matrices=False)[0][:, :k]
    Qn = torch.linalg.svd(M.T @ P0 @ Kc, full_matrices=False)[0][:, :k]
    Cn = torch.linalg.svd(torch.eye(M.shape[0], dtype=M.dtype) - Pn @ Pn.T)[0][:, :M.shape[0] - k]
    return Qn, Cn


Q0, P0 = Q, P
found: list = []
rounds = []
for rnd in range(int(sys.argv[4]) if len(sys.argv) > 4 else 6):
    if len(found) >= B:
        break
    if found:
        restrict(*deflated(found))
    n_starts = N if not found else max(64, N // 4)
    starts = cls_states(random_sentences(n_starts)) @ Q
    NOISE = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    if NOISE:  # spread the starts: isotropic noise in the space searched, NOISE x the starts' own spread
        spread = (starts - starts.mean(0)).norm(dim=1).mean()
        starts = starts + NOISE * spread * torch.randn_like(starts) / starts.shape[1] ** 0.5
    new = 0
    for i in range(0, n_starts, 128):
        a, r = lm(starts[i:i + 128].clone())
        h = a @ Q.T
        R = (vstate(h) @ U[:, B:]).norm(dim=1) / vstate(h).norm(dim=1)  # on the full column space
        if i == 0:
            print("  residual quantiles", [f"{x:.1e}" for x in R.quantile(torch.tensor([0.05, 0.25, 0.5, 0.75], dtype=torch.double)).tolist()], flush=True)
        if found and i == 0 and len(sys.argv) > 6:
            with torch.no_grad():
                Ht = m.bert(*[x for x in padded(b.truth)][:1], attention_mask=padded(b.truth)[1]).last_hidden_state[:, 0].double()
            bad = h[R > 1e-5][:3]
            print("  spurious: rel dist to nearest true", (torch.cdist(bad, Ht) / Ht.norm(dim=1)[None]).min(1)[0].tolist(),
                  "to nearest found", (torch.cdist(bad, torch.stack(found)) / bad.norm(dim=1)[:, None]).min(1)[0].tolist(),
                  "norm", bad.norm(dim=1).tolist(), "true norms", Ht.norm(dim=1).min().item(), Ht.norm(dim=1).max().item(), flush=True)
        for hh, rr in zip(h, R):
            if rr < 1e-5 and all(float((hh - f).norm() / f.norm()) > 1e-3 for f in found):
                found.append(hh); new += 1
    rounds.append((n_starts, new, len(found), round(time.process_time() - c0, 1)))
    print("round", rnd, "starts", n_starts, "new", new, "found", len(found), "cpu", rounds[-1][-1], flush=True)
    if not new:
        break
cpu = time.process_time() - c0
ids, mask = padded(b.truth)
with torch.no_grad():
    H = m.bert(ids, attention_mask=mask).last_hidden_state[:, 0].double()
F = torch.stack(found)
rel = torch.cdist(F, H) / H.norm(dim=1)[None]
near, which = rel.min(1)
hit = near < 1e-2
print(f"cpu {cpu:.1f}s; found {len(found)}; within 1% of a true h: {int(hit.sum())}, distinct {len(set(which[hit].tolist()))}/{B}; "
      f"rel dist to truth quantiles", [f"{x:.1e}" for x in near.quantile(torch.tensor([0.5, 0.95, 1.0], dtype=torch.double)).tolist()])
# labels: e by least squares on all found terms
terms = torch.stack([torch.outer(vstate(f), f).flatten() for f in found], 1)
e = torch.linalg.lstsq(terms, M.flatten()[:, None]).solution[:, 0]
print("fit of M by the found terms: rel err", float((terms @ e - M.flatten()).norm() / M.norm()))
labels_true = [y for _, y in __import__("textleak.data", fromlist=["x"]).read_sentences(data)][:B]
# e_s = (p0 - y0)/B: y = 0 -> e < 0; y = 1 -> e > 0 (up to the sign convention of d = w0 - w1)
pred = (e > 0).long().tolist()
agree = sum(int(pred[j] == (labels_true[int(which[j])] or 0)) for j in range(len(found)) if hit[j])
print("labels from sign(e): agree", agree, "of", int(hit.sum()))
json.dump({"data": data, "starts": N, "rounds": rounds, "cpu_s": round(cpu, 1), "found": len(found),
           "true_found": len(set(which[hit].tolist())), "false": int((~hit).sum()), "labels_agree": agree},
          open(f"recipes/measured/large_batch_cls_s22/disaggregate_{data}.json", "w"), indent=1)
torch.save({"found": F}, f"/tmp/s22_found_{data}.pt")
