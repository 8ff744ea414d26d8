"""Scratch (s22, ground truth): does the pooler gradient disaggregate into per-sentence [CLS] states?

CoLA dev batch 0 of 64, MiniLM classifier, eval-mode gradient as the benchmark captures it.
dW_p = sum_s e_s D v(h_s) h_s^T, D = diag(w_0 - w_1), v(h) = 1 - tanh(W_p h + b_p)^2."""
import sys, time, json, torch
sys.path.insert(0, "recipes")
from leaked_batch import leaked_batch
from textleak.text.leaks.residuals import padded

torch.manual_seed(0)
b = leaked_batch(sys.argv[1] if len(sys.argv) > 1 else "cola", 64, 0)
m = b.target.model
ids, mask = padded(b.truth)
with torch.no_grad():
    out = m.bert(ids, attention_mask=mask)
    H = out.last_hidden_state[:, 0].double()       # [B, 384]
    logits = m(ids, attention_mask=mask).logits.double()
Wp, bp = m.bert.pooler.dense.weight.double(), m.bert.pooler.dense.bias.double()
Wc = m.classifier.weight.double()
z = torch.tanh(H @ Wp.T + bp)
v = 1 - z ** 2
d = Wc[0] - Wc[1]
G = b.grads["bert.pooler.dense.weight"].double()
Gc = b.grads["classifier.weight"].double()
p = logits.softmax(-1)
print("classifier grad rows sum", float((Gc[0] + Gc[1]).norm() / Gc.norm()))
# e_s from the truth: e = (p0 - y0)/B
# fit e by least squares on dW_p
terms = torch.stack([torch.outer(d * v[s], H[s]).flatten() for s in range(len(H))], 1)  # [H*H, B]
e = torch.linalg.lstsq(terms, G.flatten()[:, None]).solution[:, 0]
print("pooler reconstruction rel err", float((terms @ e - G.flatten()).norm() / G.norm()))
print("e * B range", float(e.min() * 64), float(e.max() * 64), "p0 range", float(p[:, 0].min()), float(p[:, 0].max()))
U, S, Vh = torch.linalg.svd(G / d[:, None])
print("singular values 60..68 rel", (S[60:68] / S[0]).tolist())
P, Q = U[:, :64], Vh[:64].T
rr = lambda X, B_: (X - (X @ B_) @ B_.T).norm(dim=-1) / X.norm(dim=-1)
print("true h in row space: max rel residual", float(rr(H, Q).max()))
print("true v(h) in col space: max rel residual", float(rr(v, P).max()))
# random h with the statistics: another batch's h
torch.save({"H": H, "P": P, "Q": Q, "e": e, "v": v, "S": S}, "/tmp/s22_pooler.pt")
