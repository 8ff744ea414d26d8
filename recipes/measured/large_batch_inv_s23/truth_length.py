"""Scratch (s23, ground truth): can a sentence's length be read off its [CLS] state? Random sentences drawn
from the leaked columns (lengths from the batch's multiset), their [CLS] states; ridge regression and
nearest-class-mean (per length, LDA-like) on them, applied to the 64 true states."""
import sys, time, random, json, torch
sys.path.insert(0, "recipes/measured/large_batch_inv_s23")
from common import setup, states, random_seq
data = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
b = setup(data); rng = random.Random(0)
c0 = time.process_time()
Ls = sorted(set(b.lengths))
seqs = [random_seq(b, rng.choice(b.lengths), rng) for _ in range(N)]
X = states(b, seqs); y = torch.tensor([len(s) for s in seqs], dtype=torch.double)
H = states(b, b.truth); yt = torch.tensor([len(s) for s in b.truth])
mu, sd = X.mean(0), X.std(0) + 1e-6
Xn, Hn = (X - mu) / sd, (H - mu) / sd
for lam in (1.0, 10.0, 100.0):
    A = torch.cat([Xn, torch.ones(N, 1, dtype=X.dtype)], 1)
    w = torch.linalg.solve(A.T @ A + lam * torch.eye(A.shape[1], dtype=X.dtype), A.T @ y)
    pred = torch.cat([Hn, torch.ones(64, 1, dtype=X.dtype)], 1) @ w
    err = (pred - yt).abs()
    print(f"ridge lam {lam}: |err| median {err.median():.2f} mean {err.mean():.2f}, exact (rounded) {(pred.round() == yt).sum()}/64, within 1 {(err <= 1.0).sum()}", flush=True)
# class means with shared covariance (LDA)
means = torch.stack([Xn[y == L].mean(0) for L in Ls])
R = Xn - means[torch.tensor([Ls.index(int(v)) for v in y])]
C = R.T @ R / N + 0.1 * torch.eye(X.shape[1], dtype=X.dtype)
Ci = torch.linalg.inv(C)
def lda(Z):
    d = Z[:, None] - means[None]
    return -0.5 * torch.einsum("nkh,hg,nkg->nk", d, Ci, d)
sc = lda(Hn)
rank = [(sc[i] > sc[i, Ls.index(int(yt[i]))]).sum().item() for i in range(64)]
print("LDA: right length first", sum(r == 0 for r in rank), "top3", sum(r < 3 for r in rank), "ranks", rank)
print("cpu", time.process_time() - c0)
