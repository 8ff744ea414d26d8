"""Gradients shared at an unknown positive scale, and how to read them anyway.

What a training step shares is rarely the plain mean-loss gradient: global-norm clipping
(`max_grad_norm`, the transformers Trainer's default 1.0) multiplies it by min(1, c/||g||);
loss scaling (fp16), gradient accumulation (each micro-batch's loss divided by the number of
steps, or by the tokens counted over the step) and sum- instead of mean-reduction multiply it or
each sentence's share of it by factors the attacker does not know; per-tensor clipping gives
each parameter its own factor. Spans, ranks, orthogonality and nonzero rows do not see a positive
scale. What does: subtracting a found sentence's own gradient (peeling), the last sentence's
"nothing left" check, and label solves that compare values. This module fits the scale instead
of assuming it.

`Pencil`: the rest R of a batch gradient (rank r, e.g. a layer's Q/K/V weight gradient) and a
candidate sentence's own gradient O (rank n, computed at scale 1). If R = a O + R' with R' of
rank r - n (the sentence is in the batch, with these labels), then in R's leading singular bases
M = S^-1 U^T O V is (1/a) times a projector, so a = trace(M) / trace(M^2); the caller then checks
that R - a O drops the rank by n (a wrong sentence or label gives no such a). For a binary
classifier the wrong label's own gradient is a negative multiple of the right one's, so only
a > 0 is accepted.

`least_squares_scale`: a = <R, O> / <O, O>, for the last sentence, where R = a O exactly.

`class_labels_scale_free`: the classifier weight gradient is c (P - Y)^T X / B for pooled features
X [B, H] of full row rank, so G X^+ = c (P - Y)^T / B; the only negative entry of each column of
P - Y is the example's class (p_y - 1 < 0 <= p_k), whatever c > 0 is. (iDLG's sign rule, per example.)
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Mapping

import torch


@dataclass
class Pencil:
    """The leading rank-`rank` singular triplets of a rest gradient R [m, H] (double)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    @classmethod
    def of(cls, rest: torch.Tensor, rank: int | None, eps: float = 2.0 ** -23) -> "Pencil":
        """`rank`: R's rank; None reads it off the spectrum (the last drop of 10x whose lower edge
        is below sqrt(eps): a single tensor's, e.g. a key gradient's, is the batch's less one per
        sentence, since softmax ignores a shift of the logits and a sentence's key gradients sum to 0)."""
        U, S, Vh = torch.linalg.svd(rest.double(), full_matrices=False)
        if rank is None:
            rel = S / S[0].clamp_min(1e-300)
            ratios = rel[:-1] / rel[1:].clamp_min(1e-300)
            clear = ((ratios >= 10) & (rel[1:] < eps ** 0.5)).nonzero().flatten()
            rank = int(clear[-1]) + 1 if len(clear) else len(S)
        return cls(U[:, :rank], S[:rank], Vh[:rank].T)

    def scale(self, own: torch.Tensor) -> float:
        """a such that R - a O loses O's rank (assuming it does for some a): M = S^-1 U^T O V is then
        (1/a) times a projector, so a = trace(M) / trace(M^2) whatever O's rank is; nan when O has
        no component in R's leading spaces."""
        M = (self.U.T @ own.double() @ self.V) / self.S[:, None]
        tr2 = float((M * M.T).sum())
        return float(torch.diagonal(M).sum()) / tr2 if tr2 != 0 else float("nan")

    def refine(self, own: torch.Tensor, n: int, a: float, rounds: int = 2, step: float = 1e-4) -> float:
        """`a` made precise: the trace estimate divides by R's small singular values, which
        amplifies rounding (float32: errors ~1e-5). R - a O has rank r - n at the true a, so the
        energy beyond its best rank r - n approximation (in R's leading bases, r x r) is least
        there and quadratic around it: the vertex of a parabola through three values, twice, the
        second time a hundred times closer."""
        O = self.U.T @ own.double() @ self.V
        R = torch.diag(self.S)
        keep = len(self.S) - n
        if keep < 0 or not math.isfinite(a) or a <= 0:
            return a

        def tail(x: float) -> float:
            return float(torch.linalg.svdvals(R - x * O)[keep:].pow(2).sum())

        for _ in range(rounds):
            h = a * step
            lo, mid, hi = tail(a - h), tail(a), tail(a + h)
            curve = lo - 2 * mid + hi
            if curve <= 0:
                break
            a = a + h * (lo - hi) / (2 * curve)
            step /= 100
        return a


def stacked(tensors: Mapping[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([tensors[n].double().reshape(tensors[n].shape[0], -1) for n in names], 0)


def least_squares_scale(rest: torch.Tensor, own: torch.Tensor) -> float:
    """a minimising ||R - a O||: for a rest that should be one sentence's gradient exactly."""
    own = own.double()
    den = float((own * own).sum())
    return float((rest.double() * own).sum()) / den if den > 0 else float("nan")


def class_labels_scale_free(weight_gradient: torch.Tensor, pooled: torch.Tensor) -> list[int]:
    """Each example's class from the classifier weight gradient [C, H] and the pooled features the
    classifier saw [B, H], at any positive scale of the gradient: the most negative entry of each
    column of G X^+."""
    D = weight_gradient.double() @ torch.linalg.pinv(pooled.double())  # [C, B]
    return D.argmin(0).tolist()


class ShareFit:
    """Fits each peeled sentence's share of what is left of a batch gradient.

    `layer1`: the Q/K/V weight-gradient names of the layer whose rank the peel certifies; `others`:
    further tensors subtracted at the same scale (layer 0, embeddings, heads); `rows`: those among
    them whose rows belong to tokens or positions (embedding tables). One scale for the whole
    gradient (clipping by the global norm, loss scaling, accumulation, mean vs sum): one pencil on
    the stacked layer-1 tensors, at their rank (good to ~1e-5 in float32: small singular values
    amplify rounding), then made exact on the embedding rows only this sentence touches (there
    the rest IS its share: their ratios agree with each other to rounding). `per_tensor`
    (clipping each tensor by its own norm, as the capture records it): a pencil per layer-1
    tensor, at that tensor's own rank read off its spectrum (`eps`: the precision it was computed
    in), each embedding table by its own rows, and the other tensors are left out."""

    def __init__(self, layer1: list[str], others: list[str], rows: list[str] = (), *, per_tensor: bool = False,
                 eps: float = 2.0 ** -23):
        self.layer1, self.others, self.rows = list(layer1), list(others), list(rows)
        self.per_tensor, self.eps = per_tensor, eps
        self._pencils: dict[str, Pencil] = {}
        self._key: object = None

    def scales(self, rest: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], rank: int, n: int,
               last: bool = False) -> dict[str, float] | None:
        """name -> scale to subtract own at, or None (no positive scale fits). `rank`: of the
        layer's stacked Q/K/V gradient left; `n`: the rank the sentence should take away (its
        length). The caller checks the rank drop."""
        groups = [[n] for n in self.layer1] if self.per_tensor else [self.layer1]
        if last:  # what is left should be this sentence's gradient exactly: least squares
            fits = [least_squares_scale(stacked(rest, g), stacked(own, g)) for g in groups]
        else:
            if self._key is not rest:
                self._pencils = {g[0]: Pencil.of(stacked(rest, g), None if self.per_tensor else rank, self.eps)
                                 for g in groups}
                self._key = rest
            fits = []
            for g in groups:
                pencil, o = self._pencils[g[0]], stacked(own, g)
                a = pencil.scale(o)
                fits.append(pencil.refine(o, n, a) if math.isfinite(a) and a > 0 else a)
        if not all(math.isfinite(a) and a > 0 for a in fits):
            return None
        if self.per_tensor:
            out = {g[0]: a for g, a in zip(groups, fits)}
            for name in self.rows:
                a = own_rows_scale(rest[name], own[name], None)
                if a is not None:
                    out[name] = a
            return out
        common = fits[0]
        for name in self.rows:  # the first table with rows of this sentence alone makes it exact
            a = own_rows_scale(rest[name], own[name], common)
            if a is not None:
                common = a
                break
        return {name: common for name in self.layer1 + self.others}


def own_rows_scale(rest: torch.Tensor, own: torch.Tensor, near: float | None, tol: float = 1e-2) -> float | None:
    """The scale at which rows of an embedding table that only this sentence touches come out
    exactly: each touched row's ratio <R_t, O_t> / <O_t, O_t>, and the median of those within
    `tol` of `near` (or, with `near` None, of the largest group of rows agreeing to `tol`)."""
    touched = own.double().norm(dim=1) > 0
    if not bool(touched.any()):
        return None
    R, O = rest.double()[touched], own.double()[touched]
    ratios = (R * O).sum(1) / (O * O).sum(1)
    ratios = ratios[ratios > 0]
    if len(ratios) == 0:
        return None
    if near is None:
        agree = ((ratios[:, None] / ratios[None] - 1).abs() <= tol).sum(1)
        near = float(ratios[int(agree.argmax())])
    close = ratios[(ratios / near - 1).abs() <= tol]
    return float(close.median()) if len(close) else None


def class_labels(weight_gradient: torch.Tensor, pooled: torch.Tensor, probs: torch.Tensor,
                 inverse_share: float | None) -> list[int]:
    """Each example's class from the classifier weight gradient G = (P - Y)^T X / k: with k known
    (B for a plain mean loss, or 1 / a fitted share), Y^T = P^T - k G X^+ (the midpoint rule,
    the most robust to noise); with k unknown, the sign rule (`class_labels_scale_free`)."""
    if inverse_share is None or not inverse_share > 0:
        return class_labels_scale_free(weight_gradient, pooled)
    yt = probs.double().T - inverse_share * (weight_gradient.double() @ torch.linalg.pinv(pooled.double()))
    return yt.argmax(0).tolist()
