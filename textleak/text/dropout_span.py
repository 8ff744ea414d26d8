"""Spans under dropout: the first layer's inputs when the victim trained with dropout on.

In train mode BERT drops each coordinate of the embedding output with probability p and scales
the rest by 1/(1-p), so layer 0's Q/K/V gradient spans x_i * m_i / (1-p), not x_i: no candidate
x = LayerNorm(E[t] + P[i] + T) lies in the span (relative residual ~0.05-0.3, not 1e-7), and
every occurrence is its own direction (rank = number of tokens). What is exact again once the
mask is found: x * m lies in the span for a binary m with ~pH zeros. With W a basis of the span's
complement, W^T (x * (1 - m)) = W^T x: the dropped coordinates are a sparse set of the columns
W^T diag(x), each taken whole (`MaskSolver`: orthogonal matching pursuit, then single flips while
they lower the residual, then a linear program over [0, 1] where that stalls). A true
(token, position) pair comes out at rounding (~1e-7), others at 0.05 and above; a pair that occurs
in several sentences has one mask per occurrence (randomised restarts collect them).

The same holds one step later, where sentences are told apart: the attention output's weight
gradient of layer 0 spans the context vectors ctx_i = sum_j A_ij v_j with the attention
probabilities A dropped (`attention.output.dense`). For a hypothesised sentence, whose inputs
x_j * m_j are known from the masks above, ctx_i with every probability kept is off the span, and
the dropped ones are a sparse set of the columns P_hij v_hj (per head h and key j): the same solver
decides whether some dropout pattern puts ctx_i in the span. With the right sentence, every token
reaches rounding; with one token swapped for another sentence's token the residuals stay at
0.1-0.7 (`ContextScorer`; a few greedy flips already separate them, the full solve certifies).

Only the embedding LayerNorm's orthogonality (`lk.token_positions`) needs no mask: it places
most tokens as in eval mode, so the pairs to test are few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from . import leakage as lk


def complement(G: torch.Tensor, eps: float = 2.0 ** -23) -> tuple[torch.Tensor, int]:
    """An orthonormal basis [H, H - r] of the complement of G's row space, and the rank r (the
    last drop of 10x whose lower edge is below sqrt(eps), as `lk.layer_span` reads it)."""
    _, s, vh = torch.linalg.svd(G.double(), full_matrices=True)
    rel = s / s[0].clamp_min(1e-300)
    ratios = rel[:-1] / rel[1:].clamp_min(1e-300)
    clear = ((ratios >= 10) & (rel[1:] < math.sqrt(eps))).nonzero().flatten()
    r = int(clear[-1]) + 1 if len(clear) else len(s)
    return vh[r:].T.contiguous(), r


@dataclass
class MaskFit:
    dropped: torch.Tensor  # bool [K]: the columns taken
    residual: float  # |W^T kept| / |kept|, kept = target - the columns taken


class MaskSolver:
    """Binary sparse recovery: which columns a_k of A [m, K] (each taken whole) sum to rho [m].

    A and rho are the complement-of-span coordinates of F [H, K] and of target [H]: the vector
    kept is target - (sum of the dropped columns of F), and it lies in the span when the dropped
    columns of A sum to rho. `solve` runs orthogonal matching pursuit up to `most` columns
    (coefficients re-fitted by least squares at each step, so early wrong picks can fade), keeps
    those whose coefficient is above one half, flips single columns in or out while the residual
    falls, and, where that stalls above `tol`, solves min sum(s) subject to A s = rho,
    0 <= s <= 1, sum(s) <= max_drops as a linear program (scipy's HiGHS) and polishes its rounding
    the same way. Never more than `max_drops` columns (a few deviations above the dropout rate's
    mean): dropping nearly everything would leave a vector small enough to pass any test. The
    residual is relative to the vector kept. `weights` randomise the pursuit (restarts)."""

    def __init__(self, tol: float = 1e-5, most: int | None = None, lp: bool = True):
        self.tol, self.most, self.lp = tol, most, lp

    def solve(self, A: torch.Tensor, rho: torch.Tensor, F: torch.Tensor, target: torch.Tensor, max_drops: int,
              weights: torch.Tensor | None = None, most: int | None = None, lp: bool | None = None) -> MaskFit:
        """Columns too small to matter (together under a tenth of `tol` of the target) are left
        out of the search and counted as kept."""
        A, rho, F, target = A.double(), rho.double(), F.double(), target.double()
        scale = float(target.norm())
        norms = A.norm(dim=0)
        order = torch.argsort(norms)
        small = order[torch.cumsum(norms[order], 0) <= 0.1 * self.tol * scale]
        live = torch.ones(A.shape[1], dtype=torch.bool)
        live[small] = False
        idx = live.nonzero().flatten()
        sub, w = A[:, idx], (weights[idx] if weights is not None else None)
        dropped = self._pursuit(sub, rho, w, min(most or max_drops, max_drops), stop=0.1 * self.tol * scale)
        fit = self._polish(sub, rho, dropped, max_drops)
        fit = self._relative(fit, F[:, idx], target)
        if fit.residual > self.tol and (self.lp if lp is None else lp):
            lp_fit = self._relative(self._polish(sub, rho, self._linear_program(sub, rho, w, max_drops), max_drops),
                                    F[:, idx], target)
            fit = lp_fit if lp_fit.residual < fit.residual else fit
        full = torch.zeros(A.shape[1], dtype=torch.bool)
        full[idx] = fit.dropped
        return MaskFit(full, fit.residual)

    @staticmethod
    def _relative(fit: "MaskFit", F: torch.Tensor, target: torch.Tensor) -> "MaskFit":
        kept = float((target - F[:, fit.dropped].sum(1)).norm())
        return MaskFit(fit.dropped, fit.residual / kept if kept > 1e-3 * float(target.norm()) else math.inf)

    def _pursuit(self, A, rho, weights, most: int | None = None, stop: float = 0.0) -> torch.Tensor:
        m, K = A.shape
        norms = A.norm(dim=0).clamp_min(1e-300)
        most = min(most or self.most or m // 2, K, m - 1)
        Q = torch.zeros(m, most, dtype=A.dtype)
        taken = torch.zeros(K, dtype=torch.bool)
        chosen: list[int] = []
        res = rho.clone()
        for step in range(most):
            corr = (A.T @ res) / norms
            if weights is not None:
                corr = corr * weights
            k = int(corr.masked_fill(taken, -math.inf).argmax())
            if not corr[k] > 0 or taken[k]:
                break
            q = A[:, k].clone()
            for _ in range(2):  # Gram-Schmidt, twice for stability
                q -= Q[:, :step] @ (Q[:, :step].T @ q)
            nq = q.norm()
            if nq <= 1e-12 * norms[k]:
                break
            Q[:, step] = q / nq
            taken[k] = True
            chosen.append(k)
            res -= Q[:, step] * (Q[:, step] @ res)
            if res.norm() <= stop:
                break
        dropped = torch.zeros(K, dtype=torch.bool)
        if chosen:
            coef = torch.linalg.lstsq(A[:, chosen], rho[:, None]).solution[:, 0]
            dropped[torch.tensor(chosen)[coef > 0.5]] = True
        return dropped

    @staticmethod
    def _polish(A, rho, dropped, max_drops: int, steps: int = 400) -> MaskFit:
        """Single flips while they lower |rho - A s| (residual returned absolute)."""
        dropped = dropped.clone()
        norms = (A * A).sum(0)
        res = rho - A[:, dropped].sum(1)
        for _ in range(steps):
            sign = torch.where(dropped, -1.0, 1.0).to(A.dtype)
            gain = 2 * sign * (A.T @ res) - norms
            if int(dropped.sum()) >= max_drops:
                gain = gain.masked_fill(~dropped, -math.inf)  # at the cap: only un-drop
            k = int(gain.argmax())
            if not gain[k] > 0:
                break
            res = res - sign[k] * A[:, k]
            dropped[k] = ~dropped[k]
        return MaskFit(dropped, float(res.norm()))

    @staticmethod
    def _linear_program(A, rho, weights=None, max_drops: int | None = None) -> torch.Tensor:
        from scipy.optimize import linprog

        m, K = A.shape
        a, b = A.numpy(), rho.numpy()
        # slack on each equation (rounding), priced far above any column
        price = np.ones(K) if weights is None else 1 / weights.numpy()
        cost = np.concatenate([price, 1e3 * np.ones(2 * m)])
        eq = np.hstack([a, -np.eye(m), np.eye(m)])
        cap = None if max_drops is None else (np.concatenate([np.ones(K), np.zeros(2 * m)])[None], [max_drops])
        out = linprog(cost, A_eq=eq, b_eq=b, A_ub=cap[0] if cap else None, b_ub=cap[1] if cap else None,
                      bounds=[(0, 1)] * K + [(0, None)] * (2 * m), method="highs")
        if out.x is None:
            return torch.zeros(K, dtype=torch.bool)
        return torch.from_numpy(out.x[:K] > 0.5)


def drop_cap(rate: float, columns: int, deviations: float = 5.0) -> int:
    """The most columns a dropout at `rate` plausibly drops out of `columns`: mean + 5 sd + 2."""
    return int(rate * columns + deviations * math.sqrt(max(rate * (1 - rate) * columns, 1.0))) + 2


@dataclass
class Occurrence:
    """One token standing at one position of one (yet unknown) sentence, with the embedding
    dropout mask its layer-0 input was seen with (`kept`, bool [H])."""

    token: int
    position: int
    kept: torch.Tensor
    residual: float


def embedding_occurrences(model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], allowed: Sequence[set[int]],
                          occupants: Sequence[int], *, rate: float | None = None, restarts: int = 4, seed: int = 0,
                          solver: MaskSolver | None = None) -> tuple[list[list[Occurrence]], int]:
    """Per position, the occurrences found among the `allowed` tokens: each (token, position) whose
    LayerNorm output, masked by some binary pattern, lies in layer 0's Q/K/V span, as many distinct
    masks as the position has `occupants` (restarts with randomised pursuit weights find the
    others of a pair that several sentences share). Returns them and the layer-0 rank."""
    names = lk.qkv_names(gradients, 0)
    G = torch.cat([gradients[n].double() for n in names], 0)
    eps = torch.finfo(gradients[names[0]].dtype).eps
    W, rank = complement(G, eps)
    solver = solver or MaskSolver()
    gen = torch.Generator().manual_seed(seed)
    H = W.shape[0]
    cap = drop_cap(rate if rate else 0.3, H)  # unknown rate: up to 0.3
    out: list[list[Occurrence]] = []
    for i, tokens in enumerate(allowed[:len(occupants)]):
        tokens = sorted(tokens)
        with torch.no_grad():
            X = lk.embedding_outputs(model, torch.tensor(tokens), i).double() if tokens else []
        problems = [(t, W.T * x[None], W.T @ x, x) for t, x in zip(tokens, X)]
        found: list[Occurrence] = []
        # a first pursuit per pair (no linear program: pairs not in the batch fail it, and are most)
        for t, A, rho, x in problems:
            fit = solver.solve(A, rho, torch.diag(x), x, cap, lp=False)
            if fit.residual <= solver.tol:
                found.append(Occurrence(t, i, ~fit.dropped, fit.residual))
        # fewer than the sentences reaching i: pairs shared by several sentences, or a pursuit that
        # stalled. Restarts weigh down the coordinates already dropped for that pair (the masks of
        # different occurrences are independent) and may end in a linear program
        for attempt in range(restarts):
            if len(found) >= occupants[i]:
                break
            for t, A, rho, x in problems:
                if len(found) >= occupants[i]:
                    break
                mine = [o.kept for o in found if o.token == t]
                weights = 0.7 + 0.6 * torch.rand(A.shape[1], generator=gen, dtype=torch.double)
                for kept in mine:
                    weights[~kept] *= 0.2
                fit = solver.solve(A, rho, torch.diag(x), x, cap, weights, lp=attempt == restarts - 1 or bool(mine))
                if fit.residual <= solver.tol and not any(bool((~fit.dropped == k).all()) for k in mine):
                    found.append(Occurrence(t, i, ~fit.dropped, fit.residual))
        out.append(found)
    return out, rank


def hidden_rate(occurrences: Sequence[Sequence[Occurrence]]) -> float:
    """The embedding dropout rate estimated from the masks found (the share of coordinates dropped)."""
    kept = [o.kept.double().mean() for row in occurrences for o in row]
    return float(1 - torch.stack(kept).mean()) if kept else 0.0


class ContextScorer:
    """Scores hypothesised sentences (lists of `Occurrence`) at layer 0's attention output.

    `score` (the search's measure): for each token, the context vector with every attention
    probability kept, then `steps` greedy drops of the (head, key) column that lowers the residual
    most, in a random `dims`-dimensional part of the span's complement (cheap, and enough to rank);
    returns each sentence's summed squared relative residual and the per-token ones. `certify`:
    the full `MaskSolver` per token in the whole complement; a sentence whose every token comes
    out at rounding is certain. `rate`: the hidden dropout rate (inputs are x * m / (1 - rate))."""

    def __init__(self, model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], rate: float, *,
                 attention_rate: float = 0.1, steps: int = 4, dims: int = 96, seed: int = 0):
        name = lk._find(gradients, r"encoder\.layer\.0\.attention\.output\.dense\.weight$")
        if name is None:
            from ..errors import MissingKnowledgeError

            raise MissingKnowledgeError("recovery under dropout needs the gradient of "
                                        "encoder.layer.0.attention.output.dense.weight")
        self.W, self.rank = complement(gradients[name], torch.finfo(gradients[name].dtype).eps)
        gen = torch.Generator().manual_seed(seed)
        m = self.W.shape[1]
        R = torch.linalg.qr(torch.randn(m, min(dims, m), generator=gen, dtype=torch.double))[0]
        self.W_small = (self.W @ R).float()
        self.model, self.rate, self.attention_rate, self.steps = model, rate, attention_rate, steps
        self.attn = model.base_model.encoder.layer[0].attention.self
        self.heads = model.config.num_attention_heads
        self._x: dict[int, torch.Tensor] = {}

    def inputs(self, sentence: Sequence[Occurrence]) -> torch.Tensor:
        rows = []
        for o in sentence:
            x = self._x.get(id(o))
            if x is None:
                with torch.no_grad():
                    x = lk.embedding_outputs(self.model, torch.tensor([o.token]), o.position)[0]
                x = self._x[id(o)] = x * o.kept / (1 - self.rate)
            rows.append(x)
        return torch.stack(rows)

    def _columns(self, X: torch.Tensor, W: torch.Tensor):
        """X [V, n, H] -> columns A [V, n, m, h*n], all-kept rho [V, n, m], context norms [V, n]."""
        V, n, H = X.shape
        h, d = self.heads, H // self.heads
        with torch.no_grad():
            q = self.attn.query(X).view(V, n, h, d).transpose(1, 2)
            k = self.attn.key(X).view(V, n, h, d).transpose(1, 2)
            v = self.attn.value(X).view(V, n, h, d).transpose(1, 2)
            P = torch.softmax(q @ k.transpose(2, 3) * d ** -0.5, -1).to(W.dtype)  # [V, h, i, j]
            v = v.to(W.dtype)
            Wh = W.view(h, d, -1)
            wv = torch.einsum("hdm,vhjd->vhjm", Wh, v)
            A = (P[..., None] * wv[:, :, None]).permute(0, 2, 4, 1, 3).reshape(V, n, -1, h * n)
            ctx = torch.einsum("vhij,vhjd->vihd", P, v).reshape(V, n, H)
        self._last = (P, v)
        return A, A.sum(-1), ctx.norm(dim=-1)

    def _full(self, i: int) -> torch.Tensor:
        """Token i's columns in the full space [H, h*n] (of the last `_columns` call, first row):
        column (head, key j) is P[head, i, j] v[head, j] in that head's block."""
        P, v = self._last
        h, n, d = v.shape[1], v.shape[2], v.shape[3]
        F = torch.zeros(h * d, h * n, dtype=v.dtype)
        for head in range(h):
            F[head * d:(head + 1) * d, head * n:(head + 1) * n] = (P[0, head, i, :, None] * v[0, head]).T
        return F

    def score(self, sentences: Sequence[Sequence[Occurrence]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentences of one length: totals [V] and per-token squared residuals [V, n]. The columns
        P[h, i, j] (W_h^T v[h, j]) are never formed: correlations and updates go through P and the
        projected values wv [V, h, j, m]."""
        X = torch.stack([self.inputs(s) for s in sentences])
        V, n, H = X.shape
        h, d = self.heads, H // self.heads
        with torch.no_grad():
            q = self.attn.query(X).view(V, n, h, d).transpose(1, 2)
            k = self.attn.key(X).view(V, n, h, d).transpose(1, 2)
            v = self.attn.value(X).view(V, n, h, d).transpose(1, 2)
            P = torch.softmax(q @ k.transpose(2, 3) * d ** -0.5, -1)  # [V, h, i, j]
            wv = torch.einsum("hdm,vhjd->vhjm", self.W_small.view(h, d, -1), v)
            rho = torch.einsum("vhij,vhjm->vim", P, wv)
            scale = torch.einsum("vhij,vhjd->vihd", P, v).reshape(V, n, H).norm(dim=-1)
            norms = P ** 2 * (wv * wv).sum(-1)[:, :, None, :]  # [V, h, i, j]
            sign = torch.ones(V, h, n, n)
            rows = torch.arange(V)[:, None].expand(V, n)
            tokens = torch.arange(n)[None].expand(V, n)
            for _ in range(self.steps):
                gain = 2 * sign * P * torch.einsum("vhjm,vim->vhij", wv, rho) - norms
                flat = gain.permute(0, 2, 1, 3).reshape(V, n, h * n)
                best = flat.argmax(-1)
                take = flat.gather(-1, best[..., None]).squeeze(-1) > 0
                if not take.any():
                    break
                hb, jb = best // n, best % n
                s_ = sign[rows, hb, tokens, jb]
                col = P[rows, hb, tokens, jb][..., None] * wv[rows, hb, jb]  # [V, n, m]
                rho = rho - (take * s_)[..., None] * col
                sign[rows, hb, tokens, jb] = torch.where(take, -s_, s_)
        per_token = (rho.norm(dim=-1) / scale.clamp_min(1e-30)) ** 2
        return per_token.sum(1).double(), per_token.double()

    def certify(self, sentence: Sequence[Occurrence], solver: MaskSolver | None = None) -> torch.Tensor:
        """Each token's relative residual after the full mask solve (rounding for a true sentence)."""
        solver = solver or MaskSolver()
        A, rho, _ = self._columns(self.inputs(sentence)[None], self.W)
        cap = drop_cap(self.attention_rate, A.shape[-1])
        out = []
        for i in range(len(sentence)):
            F = self._full(i)
            out.append(solver.solve(A[0, i], rho[0, i], F, F.sum(1), cap).residual)
        return torch.tensor(out)
