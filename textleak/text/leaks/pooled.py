"""Past the rank limit, each sentence's own last-layer [CLS] state, read off a two-class BERT
pooler's gradient: the batch's sentence spans disaggregated into one vector per sentence, with its
label.

BERT's pooler feeds z = tanh(W_p h + b_p) of the last layer's [CLS] state h to the classifier, so
its weight gradient is dW_p = sum_s e_s D v(h_s) h_s^T with v(h) = 1 - tanh(W_p h + b_p)^2 and, for
two classes, one known direction D = diag(w_0 - w_1) of the classifier (e_s = (p_s0 - y_s0) / B).
Its row space holds the h_s, its column space (after D^-1) the v(h_s), B of each. A vector h of the
row space whose v(h) lies in the column space and which has the last LayerNorm's shape ((h - beta) /
gamma of mean 0 and unit variance) is one of the h_s: 300-odd equations in B unknowns. They are
solved by Levenberg-Marquardt in the row-space coefficients from the [CLS] states of any guesses
(`starts`), and once some h_s are found the rest lie in known subspaces of rank B - k (the part of
the gradient on the row directions orthogonal to the found h's has the missing v's for columns,
and vice versa), where the next starts are solved. The signs of the least-squares e_s are the
labels.

Measured (MiniLM, CoLA dev batch 0 of 64, eval-mode gradient; scratch scripts in
recipes/measured/large_batch_cls_s22/): every true h_s has v(h_s) off the column space by 1.8e-6
(relative) and a state 0.1% off by 6e-6, a random one by 8e-3; from 512 starts (the [CLS] states of
random sentences drawn from the leaked candidates) and three deflated rounds of 128 all 64 h_s came
back, each within 2.7e-4 of the truth, none false, every label right (29 CPU s). Without the LayerNorm
shape half the starts converge to -h_s; without deflation 1024 starts found 53 of 64 (one basin took
631 of them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ...core import budget
from ..layouts import Layout

log = logging.getLogger(__name__)

#: a state is one of the batch's when v(h) is this far (relative) off the pooler gradient's column
#: space at most: true states 1.8e-6 (CoLA batch 64), 0.1% off one 6e-6, random 8e-3
ACCEPT = 1e-5
#: two solutions are one state within this relative distance, the one nearer the column space kept (`_admit`).
#: Solutions land within 2.7e-4 of the truth on CoLA, but RT batch 64 solves a state twice 1e-3 to 5e-3 apart (true
#: states stand 0.45 apart at least): at 1e-3 four start draws of five read 14-22 of 64 states, one 35
#: (recipes/measured/large_batch_s38/)
SAME = 1e-2
#: each start's Levenberg-Marquardt iterations (`pooled_states`' `iters`; `beyond_rank.pooled_iters` sets fewer)
ITERS = 80


@dataclass
class PooledStates:
    """states: [k, H] float64, each sentence's last-layer [CLS] state found (k <= B); labels: the class of
    each (0 or 1); residuals: v(h) off the column space, relative; rank: B."""

    states: torch.Tensor
    labels: list[int]
    residuals: torch.Tensor
    rank: int

    @property
    def complete(self) -> bool:
        return len(self.states) == self.rank


class _Equations:
    """v(h) off a column basis and the LayerNorm shape of h = basis @ a, with their Jacobian in a (`__call__`), or
    with the Gauss-Newton products J^T J and J^T r straight away (`normal`, no Jacobian); `terms`: the products the
    solver steps on, by `jacobian_free`."""

    def __init__(self, Wp: torch.Tensor, bp: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 jacobian_free: bool = False):
        self.Wp, self.bp, self.jacobian_free = Wp, bp, jacobian_free
        self.keep = gamma.abs() > 1e-3 * gamma.abs().max()
        self.g, self.b = gamma[self.keep], beta[self.keep]

    def restrict(self, rows: torch.Tensor, off: torch.Tensor) -> None:
        self.Q, self.C, self.WQ, self.Qk = rows, off, self.Wp @ rows, rows[self.keep] / self.g[:, None]
        self.P: torch.Tensor | None = None  # with `normal`: the column basis' complement (orthonormal), made once

    def __call__(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(a @ self.WQ.T + self.bp)
        v = 1 - z ** 2
        r1, J1 = v @ self.C, torch.einsum("hc,nh,hk->nck", self.C, -2 * z * v, self.WQ)
        r2, J2 = self._shape(a)
        return torch.cat([r1, r2], 1), torch.cat([J1, J2], 1)

    def _shape(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LayerNorm shape's two residuals [n, 2] and their Jacobian [n, 2, k]."""
        n = a @ self.Qk.T - self.b / self.g
        K = n.shape[1]
        r2 = torch.stack([n.mean(1), (n ** 2).mean(1) - 1], 1) * 1e-3
        J2 = torch.stack([self.Qk.mean(0).expand(len(a), -1), 2 * (n @ self.Qk) / K], 1) * 1e-3
        return r2, J2

    def terms(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, J^T J, J^T r): `normal` where `jacobian_free`, else `products`."""
        return self.normal(a) if self.jacobian_free else self.products(a)

    def products(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, J^T J, J^T r) from the Jacobian (`__call__`)."""
        r, J = self(a)
        return r, J.transpose(1, 2) @ J, (J.transpose(1, 2) @ r[..., None])[..., 0]

    def normal(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`products` without the Jacobian (`pooled_normal`): the column part's Jacobian is C^T A with A = diag(s) WQ
        [n, H, k] (s = -2 z v), and C's columns are orthonormal, so J1^T J1 = A^T A - (P^T A)^T (P^T A) (P: C's
        complement, B - k columns where C has H - B + k) and J1^T r1 = A^T (C r1). The same step to float64 rounding,
        without the [n, H - B + k, k] Jacobian nor the where over it (large_batch_s46/b64_README.md)."""
        if self.P is None:
            self.P = torch.linalg.svd(self.C, full_matrices=True)[0][:, self.C.shape[1]:]
        z = torch.tanh(a @ self.WQ.T + self.bp)
        v = 1 - z ** 2
        r1, A = v @ self.C, (-2 * z * v)[:, :, None] * self.WQ
        PA, At = self.P.T @ A, A.transpose(1, 2)
        r2, J2 = self._shape(a)
        JtJ = At @ A - PA.transpose(1, 2) @ PA + J2.transpose(1, 2) @ J2
        g = (At @ (r1 @ self.C.T)[..., None])[..., 0] + (J2.transpose(1, 2) @ r2[..., None])[..., 0]
        return torch.cat([r1, r2], 1), JtJ, g


def _levenberg(eq: _Equations, a: torch.Tensor, iters: int = ITERS) -> torch.Tensor:
    """Levenberg-Marquardt from the starts `a` [n, k], on `eq.terms` (with the Jacobian: the same numbers as before
    session 46)."""
    terms = eq.terms
    lam = torch.full((len(a),), 1e-3, dtype=a.dtype)
    r, JtJ, g = terms(a)
    cost = (r ** 2).sum(1)
    for _ in range(iters):
        damp = torch.diag_embed(lam[:, None] * torch.diagonal(JtJ, dim1=1, dim2=2) + 1e-15)
        step = torch.linalg.solve(JtJ + damp, -g[..., None])[..., 0]
        rn, JtJn, gn = terms(a + step)
        cn = (rn ** 2).sum(1)
        ok = cn < cost
        a = torch.where(ok[:, None], a + step, a)
        r, cost = torch.where(ok[:, None], rn, r), torch.where(ok, cn, cost)
        JtJ, g = torch.where(ok[:, None, None], JtJn, JtJ), torch.where(ok[:, None], gn, g)
        lam = torch.where(ok, lam / 3, lam * 4)
    return a


def _pooler(layout: Layout, gradients: dict) -> tuple | None:
    """(W_p, b_p, D, gradient, gamma, beta) of a two-class BERT pooler, or None."""
    found = layout.pooler()
    if found is None:
        return None
    dense, norm = found
    head = layout.classifier().output
    if head.weight.shape[0] != 2 or layout.name(dense.weight) not in gradients:
        return None
    f = lambda t: t.detach().double().cpu()  # noqa: E731
    d = f(head.weight[0] - head.weight[1])
    if float(d.abs().min()) == 0.0:
        return None
    return (f(dense.weight), f(dense.bias), d, f(gradients[layout.name(dense.weight)]), f(norm.weight), f(norm.bias))


def pooled_states(layout: Layout, gradients: dict, rank: int, starts: Callable[[int], torch.Tensor],
                  first: int = 512, later: int = 128, rounds: int = 8, merge: float = 0.0, iters: int = ITERS,
                  normal: bool = False, known: torch.Tensor | None = None) -> PooledStates | None:
    """The batch's last-layer [CLS] states and labels (module doc), or None where there is no two-class
    pooler. rank: B (the sentence spans'); starts(n) -> [n, H] [CLS] states of n guesses to start from.
    merge: solutions within this relative distance are one state, the one nearer the column space kept
    (`_admit`), and the deflated rounds go on while the time lasts; 0: within SAME. iters: each
    start's Levenberg-Marquardt iterations (RT batch 64, MiniLM: 30 in the deflated rounds found the same states
    as 80, round for round, in 79 CPU s against 135; recipes/measured/large_batch_s28/). normal: the solver's
    steps without the Jacobian (`_Equations.normal`, `beyond_rank --option pooled_normal=true`). known: [k, H] states
    known before the solve (the found sentences' [CLS] states, `beyond_rank --option pooled_known=true`), each taken
    where it fits (under ACCEPT), so the first round's starts are solved in what they leave (`_deflated`)."""
    got = _pooler(layout, gradients)
    if got is None:
        return None
    Wp, bp, d, G, gamma, beta = got
    M = G / d[:, None]
    U, S, Vh = torch.linalg.svd(M)
    P, Q, off = U[:, :rank], Vh[:rank].T, U[:, rank:]
    eq = _Equations(Wp, bp, gamma, beta, jacobian_free=normal)
    vstate = lambda h: 1 - torch.tanh(h @ Wp.T + bp) ** 2  # noqa: E731
    found: list[torch.Tensor] = []
    fits: list[float] = []  # each found state's residual
    if known is not None and len(known):
        h = known.double().cpu()
        for hh, rr in zip(h, _residuals(vstate(h), off).tolist()):
            if rr < ACCEPT:
                _admit(found, fits, hh, rr, merge)
    given = len(found)
    for _ in range(rounds):
        if len(found) >= rank or (merge and found and budget.expired()):
            break
        eq.restrict(*(_deflated(M, P, Q, torch.stack(found), vstate, rank) if found else (Q, off)))
        before = len(found)
        a0 = starts(later if len(found) > given else first).double().cpu() @ eq.Q
        for i in range(0, len(a0), 128):
            h = _levenberg(eq, a0[i:i + 128], iters) @ eq.Q.T
            v = vstate(h)
            res = _residuals(v, off)
            for hh, rr in zip(h, res.tolist()):
                if rr < ACCEPT:
                    _admit(found, fits, hh, rr, merge)
        if len(found) == before:
            break
    if not found:
        return None
    H = torch.stack(found)
    v = vstate(H)
    terms = torch.stack([torch.outer(v[s], H[s]).flatten() for s in range(len(H))], 1)
    e = torch.linalg.lstsq(terms, M.flatten()[:, None]).solution[:, 0]
    log.debug("pooled states: %d of %d", len(found), rank)
    return PooledStates(H, [int(x > 0) for x in e.tolist()], _residuals(v, off), rank)


def _residuals(v: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """v(h) off the column space, relative (one a row of `v`)."""
    return (v @ off).norm(dim=1) / v.norm(dim=1)


def _admit(found: list[torch.Tensor], fits: list[float], h: torch.Tensor, res: float, merge: float) -> None:
    """A solution h (residual res) into the states found: new where it stands further than SAME (`merge`, where
    set) from every one of them, else in the place of the found one it is near where it fits better.

    Far past the limit a state can be solved twice a few 1e-3 apart, both under ACCEPT (RT batch 64, MiniLM:
    one state 2.4e-4 and 5.1e-3 off the truth, the next state 0.45 away): kept as two, the deflation takes out
    one direction too many and no later round solves anything (14 of 64 states read;
    recipes/measured/large_batch_s27/; SAME was 1e-3 then)."""
    near = [k for k, f in enumerate(found) if float((h - f).norm() / f.norm()) <= (merge or SAME)]
    if not near:
        found.append(h)
        fits.append(res)
    elif res < fits[near[0]]:
        found[near[0]], fits[near[0]] = h, res


def _deflated(M, P, Q, found, vstate, rank):
    """Row basis and column complement of the terms not yet found: exact once the found h's are."""
    k = rank - len(found)
    Kr = torch.linalg.svd(found @ Q, full_matrices=True)[2][len(found):].T
    Kc = torch.linalg.svd(vstate(found) @ P, full_matrices=True)[2][len(found):].T
    Pn = torch.linalg.svd(M @ Q @ Kr, full_matrices=False)[0][:, :k]
    Qn = torch.linalg.svd(M.T @ P @ Kc, full_matrices=False)[0][:, :k]
    off = torch.linalg.svd(torch.eye(M.shape[0], dtype=M.dtype) - Pn @ Pn.T)[0][:, :M.shape[0] - k]
    return Qn, off
