"""Gradients shared at an unknown positive scale, and how to read them anyway.

What a training step shares is rarely the plain mean-loss gradient: global-norm clipping
(`max_grad_norm`, the transformers Trainer's default 1.0) multiplies it by min(1, c/||g||);
loss scaling (fp16), gradient accumulation (each micro-batch's loss divided by the number of
steps, or by the tokens counted over the step) and sum- instead of mean-reduction multiply it or
each sentence's share of it by factors the attacker does not know. Spans, ranks, orthogonality and nonzero rows do not see a positive
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

`own_rows_scale`: rows of an embedding table that only one sentence touches hold exactly its
share, so their ratios to its own gradient give the share to rounding.

Class labels at an unknown scale are in `leaks.labels.assign_class_labels` (the sign rule).
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


class ShareFit:
    """Fits each peeled sentence's share of what is left of a batch gradient.

    `layer1`: the Q/K/V weight-gradient names of the layer whose rank the peel certifies; `others`:
    further tensors subtracted at the same scale (layer 0, embeddings, heads); `rows`: those among
    them whose rows belong to tokens or positions (embedding tables). One scale for the whole
    gradient (clipping by the global norm, loss scaling, accumulation, mean vs sum): one pencil on
    the stacked layer-1 tensors, at their rank (good to ~1e-5 in float32: small singular values
    amplify rounding), then made exact on the embedding rows only this sentence touches (there
    the rest IS its share: their ratios agree with each other to rounding)."""

    def __init__(self, layer1: list[str], others: list[str], rows: list[str] = (), *, eps: float = 2.0 ** -23):
        self.layer1, self.others, self.rows, self.eps = list(layer1), list(others), list(rows), eps
        self._pencil: Pencil | None = None
        self._key: object = None

    def scale(self, rest: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], rank: int, n: int,
              last: bool = False) -> float | None:
        """The factor to subtract `own` at, or None (no positive factor fits). `rank`: of the
        layer's stacked Q/K/V gradient left; `n`: the rank the sentence should take away (its
        length). The caller checks the rank drop."""
        o = stacked(own, self.layer1)
        if last:  # what is left should be this sentence's gradient exactly: least squares
            a = least_squares_scale(stacked(rest, self.layer1), o)
        else:
            if self._key is not rest:  # one decomposition per rest, shared by the label choices
                self._pencil, self._key = Pencil.of(stacked(rest, self.layer1), rank, self.eps), rest
            a = self._pencil.scale(o)
            if math.isfinite(a) and a > 0:
                a = self._pencil.refine(o, n, a)
        if not (math.isfinite(a) and a > 0):
            return None
        for name in self.rows:  # the first table with rows of this sentence alone makes it exact
            exact = own_rows_scale(rest[name], own[name], a)
            if exact is not None:
                return exact
        return a


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

