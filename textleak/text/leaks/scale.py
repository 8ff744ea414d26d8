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

Per-layer clipping (each parameter's gradient scaled to a bound on its own, Opacus' per-layer
style) gives every clipped tensor its own unknown factor, the same for all sentences. Then each
such tensor's share is fitted on its own (`ShareFit(own=...)`): a weight matrix by
`Pencil.eigen_scale` (R - a O loses rank exactly where 1/a is an eigenvalue of M; the true a is
the eigenvalue repeated once per input only this sentence gave, which also holds at layer 0, where
[CLS] at position 0 and other (token, position) inputs are shared between sentences and the trace
rule does not), an embedding table by its own rows. The word- and position-embedding tables
receive the same per-token gradient (their rows' sums agree), so `linked_tables` brings the
position table to the word table's factor once, up front, and the two share one fit (and the
token-position leak, which moves shares between them, holds again).

Class labels at an unknown scale are in `leaks.labels.assign_class_labels` (the sign rule).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Mapping

import torch

from .memo import memo


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

    @classmethod
    def within(cls, rest: torch.Tensor, rows: torch.Tensor, eps: float = 2.0 ** -23) -> "Pencil":
        """One tensor's pencil inside a row space `rows` [H, r] read off its whole layer (Q, K and
        V share their inputs, so the stacked gradient's rank is reliable where one tensor's spectrum,
        e.g. a weak query gradient's, has no clear drop): R V's triplets above rounding (32 eps:
        a key gradient lacks one direction per sentence, as its rows sum to 0 per sentence)."""
        U, S, Wh = torch.linalg.svd(rest.double() @ rows, full_matrices=False)
        k = max(1, int((S > S[0] * 32 * eps).sum()))
        return cls(U[:, :k], S[:k], rows @ Wh[:k].T)

    def scale(self, own: torch.Tensor) -> float:
        """a such that R - a O loses O's rank (assuming it does for some a): M = S^-1 U^T O V is then
        (1/a) times a projector, so a = trace(M) / trace(M^2) whatever O's rank is; nan when O has
        no component in R's leading spaces."""
        M = (self.U.T @ own.double() @ self.V) / self.S[:, None]
        tr2 = float((M * M.T).sum())
        return float(torch.diagonal(M).sum()) / tr2 if tr2 != 0 else float("nan")

    def eigen_scale(self, own: torch.Tensor, tol: float = 1e-3) -> tuple[float, int]:
        """(a, how many directions R - a O loses there): 1/a is the most repeated clear eigenvalue
        of M = S^-1 U^T O V (nan, 0 when none is repeated or positive)."""
        M = (self.U.T @ own.double() @ self.V) / self.S[:, None]
        ev = torch.linalg.eigvals(M)
        real = ev.real[(ev.imag.abs() <= tol * ev.abs()) & (ev.real > 0)]
        if len(real) == 0:
            return float("nan"), 0
        agree = ((real[:, None] / real[None] - 1).abs() <= tol)
        counts = agree.sum(1)
        best = int(counts.argmax())
        group = real[agree[best]]
        if int(counts[best]) < 2 and len(real) > 1:  # a lone eigenvalue among others: no clear answer
            return float("nan"), 0
        return 1.0 / float(group.mean()), int(counts[best])

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
    further tensors subtracted with it (layer 0, embeddings, heads); `rows`: those among them whose
    rows belong to tokens or positions (embedding tables, brought to one factor by
    `linked_tables`). One scale for the whole gradient (clipping by the global norm, loss
    scaling, accumulation, mean vs sum): one pencil on the stacked layer-1 tensors, at their rank
    (good to ~1e-5 in float32: small singular values amplify rounding), then made exact on the
    embedding rows only this sentence touches (there the rest IS its share: their ratios agree
    with each other to rounding). `own`: tensors scaled by a factor of their own (per-layer
    clipping): each is fitted alone (`_fit_alone`); the rest keep the common scale.
    `scale` returns {name: share}."""

    def __init__(self, layer1: list[str], others: list[str], rows: list[str] = (), *, eps: float = 2.0 ** -23,
                 own: set[str] = frozenset(), layers: list[list[str]] = ()):
        self.layer1, self.others, self.rows, self.eps = list(layer1), list(others), list(rows), eps
        self.own = set(own)
        # each tensor's layer (its Q/K/V, stacked): the row space a tensor of its own factor is fitted in
        self.layer_of = {x: tuple(group) for group in [self.layer1, *layers] for x in group}
        self._pencils: dict[object, Pencil] = {}
        self._key: object = None
        self.accepted: list[dict[str, float]] = []  # the shares of each peel accepted

    def _pencil(self, rest: Mapping[str, torch.Tensor], names: tuple[str, ...], rank: int | None) -> Pencil:
        if self._key is not rest:  # one decomposition per rest, shared by the label choices
            self._pencils, self._key = {}, rest
        if names not in self._pencils:
            self._pencils[names] = Pencil.of(stacked(rest, names), rank, self.eps)
        return self._pencils[names]

    def scale(self, rest: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], rank: int, n: int,
              last: bool = False) -> dict[str, float] | None:
        """The factor to subtract each of `own` at, or None (no positive factor fits). `rank`: of
        the layer's stacked Q/K/V gradient left; `n`: the rank the sentence should take away (its
        length). The caller checks the rank drop."""
        names = list(dict.fromkeys(self.layer1 + self.others))
        common = [x for x in names if x not in self.own]
        shares: dict[str, float] = {}
        if common:
            a = self._fit_common(rest, own, common, rank, n, last)
            if a is None:
                return None
            shares.update(dict.fromkeys(common, a))
        pending = []  # own-factor tensors whose fit failed: recalled from earlier peels
        for x in names:
            if x not in self.own or x in shares or x in pending:
                continue
            group = [r for r in self.rows if r in self.own] if x in self.rows else [x]
            # the tables share one factor (`linked_tables`): one fit for all
            a = self._fit_rows(rest, own, last) if x in self.rows else \
                self._fit_alone(rest, own, x, last, rank if self.layer_of.get(x) == tuple(self.layer1) else None)
            if a is None:
                pending += group
            else:
                shares.update(dict.fromkeys(group, a))
        for x in pending:
            a = self._recalled(x, shares)
            if a is None and x in self.rows and not last:  # approximate: least squares over its rows
                a = self._rows_least_squares(rest, own)
            if a is None:
                return None
            shares[x] = a
        return shares

    def _fit_common(self, rest, own, common: list[str], rank: int, n: int, last: bool) -> float | None:
        """One factor for `common`: the stacked layer-1 pencil (or, per-layer, the tensor's own fit),
        made exact on the embedding rows only this sentence touches."""
        layer1 = tuple(x for x in self.layer1 if x in common)
        if not layer1:
            return self._fit_alone(rest, own, common[0], last) if common[0] not in self.rows else \
                self._fit_rows(rest, own, {}, last)
        o = stacked(own, layer1)
        if len(layer1) < len(self.layer1):  # per-layer clipping left only some of layer 1 at this factor
            a = self._fit_alone(rest, own, layer1, last, rank)
            a = float("nan") if a is None else a
        elif last:  # what is left should be this sentence's gradient exactly: least squares
            a = least_squares_scale(stacked(rest, layer1), o)
        else:
            pencil = self._pencil(rest, layer1, rank)
            a = pencil.scale(o)
            if math.isfinite(a) and a > 0:
                a = pencil.refine(o, n, a)
        if not (math.isfinite(a) and a > 0):
            return None
        for name in self.rows:  # the first table with rows of this sentence alone makes it exact
            if name in common:
                exact = own_rows_scale(rest[name], own[name], a)
                if exact is not None:
                    return exact
        return a

    def _fit_alone(self, rest, own, name: str | tuple[str, ...], last: bool, rank: int | None = None
                   ) -> float | None:
        """Weight matrices (one, or several of one layer) scaled by a factor of their own: least
        squares for the last sentence, else the repeated eigenvalue of their pencil in their
        layer's row space (at `rank` where known), refined."""
        names = (name,) if isinstance(name, str) else tuple(name)
        o = stacked(own, names)
        if last:
            a = least_squares_scale(stacked(rest, names), o)
        else:
            key = ("in", names)
            if self._key is not rest or key not in self._pencils:
                rows = self._pencil(rest, self.layer_of.get(names[0], names), rank).V
                self._pencils[key] = Pencil.within(stacked(rest, names), rows, self.eps)
            pencil = self._pencils[key]
            a, drop = pencil.eigen_scale(o)
            if math.isfinite(a) and a > 0:
                a = pencil.refine(o, drop, a)
        return a if math.isfinite(a) and a > 0 else None

    def _fit_rows(self, rest, own, last: bool) -> float | None:
        """The embedding tables' own factor: their rows only this sentence touches (at least two
        agreeing, over the linked tables)."""
        tables = [r for r in self.rows if r in self.own]
        R = torch.cat([rest[r].double() for r in tables], 0)
        O = torch.cat([own[r].double() for r in tables], 0)
        a = least_squares_scale(R, O) if last else own_rows_scale(R, O, None, least=2)
        return a if a is not None and math.isfinite(a) and a > 0 else None

    def _rows_least_squares(self, rest, own) -> float | None:
        tables = [r for r in self.rows if r in self.own]
        R = torch.cat([rest[r].double() for r in tables], 0)
        O = torch.cat([own[r].double() for r in tables], 0)
        touched = O.norm(dim=1) > 0
        a = least_squares_scale(R[touched], O[touched])
        return a if math.isfinite(a) and a > 0 else None

    def _recalled(self, name: str, shares: Mapping[str, float]) -> float | None:
        """A tensor's share from a tensor fitted now and the ratio of the two in earlier peels
        (per-layer clipping fixes each tensor's factor for the whole batch)."""
        for y, a in shares.items():
            ratios = [s[name] / s[y] for s in self.accepted if name in s and y in s and s[y] > 0]
            if ratios:
                return a * float(torch.tensor(ratios).median())
        return None

    def remember(self, shares: Mapping[str, float]) -> None:
        """An accepted peel's shares: their ratios stand in for a fit that fails later."""
        self.accepted.append(dict(shares))


def linked_tables(word: str | None, others: list[str], gradients: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """The gradient with each of `others` (position, token-type tables) brought to the word
    table's factor: every token adds the same vector to its word row and its position row, so
    the tables' row sums agree up to the factors per-layer clipping gave them."""
    out = dict(gradients)
    if word is None or word not in gradients:
        return out
    w = gradients[word].double().sum(0)
    for name in others:
        if name in gradients:
            t = gradients[name].double().sum(0)
            den = float((t * t).sum())
            if den > 0:
                out[name] = (gradients[name].double() * (float((w * t).sum()) / den)).to(gradients[name].dtype)
    return out


def touched_rows(table: torch.Tensor) -> torch.Tensor:
    """The indices of `table`'s rows [T] holding a nonzero entry (a sentence's own gradient of an embedding table
    touches its tokens' or positions' rows only), read once per tensor (`memo`): a peel trial's share fit
    (`own_rows_scale`) and its subtraction (`exact.peeling.subtracted`) both ask."""
    return memo(table, "touched_rows", lambda: (table != 0).any(dim=1).nonzero().flatten())


def own_rows_scale(rest: torch.Tensor, own: torch.Tensor, near: float | None, tol: float = 1e-2,
                   least: int = 1) -> float | None:
    """The scale at which rows of an embedding table that only this sentence touches come out
    exactly: each touched row's ratio <R_t, O_t> / <O_t, O_t>, and the median of those within
    `tol` of `near` (or, with `near` None, of the largest group of rows agreeing to `tol`, if it
    has at least `least` rows)."""
    touched = touched_rows(own)  # (no double copy of the whole table: the rows are picked first)
    if len(touched) == 0:
        return None
    R, O = rest[touched].double(), own[touched].double()
    ratios = (R * O).sum(1) / (O * O).sum(1)
    ratios = ratios[ratios > 0]
    if len(ratios) == 0:
        return None
    if near is None:
        agree = ((ratios[:, None] / ratios[None] - 1).abs() <= tol).sum(1)
        if int(agree.max()) < least:
            return None
        near = float(ratios[int(agree.argmax())])
    close = ratios[(ratios / near - 1).abs() <= tol]
    return float(close.median()) if len(close) else None

