"""Layer input spans: the weight gradient of a linear map W x is sum_i delta_i x_i^T, so its row
space is spanned by the inputs x_i of that layer when they are fewer than its width (DAGER,
Petrov et al. 2024). Where several layers share the weights (ALBERT), the gradient sums over all
their inputs: the span holds every sharing layer's inputs, and the rank bound is layers x tokens.

A span test turns the Q/K/V weight gradients of one layer into a `LayerSpan`: a basis, a rank and
the tolerances that say what counts as inside. Span tests are registered by name in `SPAN_TESTS`
(the default, "rank-gap", puts the rank at the last clear singular-value drop onto rounding
noise); a test for noisy or sparse-error gradients is one more registered function with the same
signature, `(matrices, layer) -> LayerSpan`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from ...registry import Registry
from ..layouts import Layout
from ..layouts.layer0 import span_residuals
from .memo import memo

#: below this ratio between consecutive singular values there is no usable rank gap
MIN_GAP = 10.0

#: name -> function(matrices [each [out, H]], layer) -> LayerSpan
SPAN_TESTS: Registry[Callable[[Sequence[torch.Tensor], int], "LayerSpan"]] = Registry("span test")


@dataclass
class LayerSpan:
    """The row space of one attention layer's Q/K/V weight gradients.

    basis: [H, r] orthonormal; rank r at the last clear singular-value drop (onto the noise
    plateau); tol: residual below which a vector counts as inside (the geometric mean of the gap's two edges, so it comes
    from the gradient itself); exact: whether a clear gap exists (r < H).
    """

    layer: int
    basis: torch.Tensor
    singular_values: torch.Tensor
    rank: int
    gap: float
    tol: float
    _basis32: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def floor(self) -> float:
        """Largest residual a true member can show: first discarded / last kept singular value."""
        r = self.rank
        return float(self.singular_values[r] / self.singular_values[r - 1]) if r < len(self.singular_values) else 1.0

    def certifies(self, residual: float, tokens: int) -> bool:
        """Whether a whole sentence's summed squared residual is what `tokens` true members can
        show (each at most `floor`): the layer-1 certificate."""
        return residual <= self.floor ** 2 * tokens

    @property
    def exact(self) -> bool:
        return self.gap >= MIN_GAP and self.rank < self.basis.shape[0]

    def residual(self, h: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
        """Relative distance of each row of h [N, H] from the span; `precise=False` projects
        in float32 (a fifth of a search step's cost in double; enough to rank candidates, not to
        certify: certificates use the default)."""
        basis = self.basis
        if precise:
            h = h.double()
        else:
            if self._basis32 is None:
                self._basis32 = self.basis.float()
            h, basis = h.float(), self._basis32
        proj = (h @ basis) @ basis.T
        return (h - proj).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-30)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """What a search ranks candidate inputs by (the fast residual here; a span that scores
        only what is left of the batch overrides it: `precision.RoundedSpan.without`)."""
        return self.residual(h, precise=False)

    def without(self, layout: Layout, sequence: Sequence[int]) -> "LayerSpan":
        """The span to search once `sequence` is found and nothing peels it off the gradient:
        unchanged here (reduced precision overrides it)."""
        return self


@SPAN_TESTS.register("rank-gap")
def rank_gap(matrices: Sequence[torch.Tensor], layer: int) -> LayerSpan:
    """The span of the stacked `matrices`' rows, its rank at the last clear singular-value drop
    below the square root of their dtype's precision."""
    G = torch.cat([m.double() for m in matrices], 0)
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    H = G.shape[1]
    s = s / s[0].clamp_min(1e-300)
    ratios = s[:-1] / s[1:].clamp_min(1e-300)
    # the gap sought is the drop to rounding noise, so only drops whose lower edge lies below the
    # square root of the gradient dtype's precision are considered (a dominant first direction
    # in a random model must not pass for the rank)
    floor = math.sqrt(torch.finfo(matrices[0].dtype).eps)
    ratios = torch.where(s[1:] < floor, ratios, torch.zeros_like(ratios))
    # the rank is where the spectrum meets the noise plateau: the last clear drop, not the
    # largest one (a weakly weighted input, e.g. a token far from the loss, sits just above it)
    clear = (ratios >= MIN_GAP).nonzero().flatten()
    r = int(clear[-1]) + 1 if len(clear) else int(torch.argmax(ratios)) + 1
    gap = float(ratios[r - 1])
    if gap < MIN_GAP:  # no clear gap: the inputs fill the whole space (or noise hides them)
        r = H
    tol = math.sqrt(float(s[r]) / float(s[r - 1])) if r < H else 1.0
    return LayerSpan(layer, vh[:r].T.contiguous(), s, r, gap, min(tol, 0.1))


def layer_span(layout: Layout, gradients: Mapping[str, torch.Tensor], layer: int, test: str = "rank-gap") -> LayerSpan:
    """The span of layer `layer`'s inputs from its shared Q/K/V weight gradients, on the model's
    device; MissingKnowledgeError naming the parameters when the file shares none of them."""
    names = layout.qkv_names(layer)
    layout.require(gradients, names, "exact recovery")
    shared = [gradients[n] for n in layout.shared(gradients, names)]
    found = memo(shared[0], f"layer_span|{layer}|{test}|{layout.device}",
                 lambda: SPAN_TESTS.get(test)([g.to(layout.device) for g in shared], layer), also=shared[1:])
    return copy.copy(found)  # read once per set of tensors (the preflights ask too); callers may set `tol`


def calibrate_threshold(residuals: torch.Tensor, bound: float) -> float:
    """Middle (in log scale) of the widest gap in sorted residuals below `bound`."""
    edge = torch.tensor([bound], dtype=torch.double, device=residuals.device)
    vals = torch.sort(torch.cat([residuals.double().clamp_min(1e-30), edge])).values
    vals = vals[vals <= bound]
    if len(vals) < 2:
        return bound
    logs = vals.log()
    gaps = logs[1:] - logs[:-1]
    k = int(torch.argmax(gaps))
    if float(gaps[k]) < math.log(10.0):  # no separation: everything below the bound counts
        return bound
    return float(((logs[k] + logs[k + 1]) / 2).exp())


def _screen(layout: Layout, span: LayerSpan, vocab: torch.Tensor, p: int, rough_res: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, residuals) of `vocab` at position p inside the span's tolerance (else the best one),
    from the squared residuals of a screen (`layer0.span_residuals`) that keeps every plausible
    member; survivors are measured again in float64, where member residuals (~1e-7) are resolved."""
    keep = (rough_res < span.tol ** 2 + 1e-4).nonzero().flatten()
    if len(keep) == 0:
        keep = rough_res.argmin().reshape(1)
    res = span.residual(layout.layer0_inputs(vocab[keep], p))
    inside = (res < span.tol).nonzero().flatten()
    keep, res = (keep[inside], res[inside]) if len(inside) else (keep[res.argmin()].reshape(1), res.min().reshape(1))
    return vocab[keep], res


def position_candidates(layout: Layout, span: LayerSpan, vocab: torch.Tensor, length: int
                        ) -> tuple[list[list[tuple[int, float]]], float]:
    """For each position < length, the (token, residual) pairs of `vocab` inside the layer-0 span,
    best first, and the threshold used.

    The threshold is calibrated on the residuals themselves: members sit at the noise floor of the
    gradient, non-members orders of magnitude above, so it is set in the middle (log scale) of the
    widest gap among the residuals below the spectral bound `span.tol`. A position with no member
    keeps its single best token (its residual then exceeds the threshold, which callers can see).
    """
    vocab = vocab.to(layout.device)
    with torch.no_grad():
        rough = span_residuals(layout, vocab, list(range(length)), span.basis)
        per_position = [_screen(layout, span, vocab, p, rough[p]) for p in range(length)]
    # members may sit as high as noise / weakest signal (span.floor), so never cut below it
    threshold = max(calibrate_threshold(torch.cat([r for _, r in per_position]), span.tol), span.floor)
    out = []
    for ids, res in per_position:
        inside = (res <= threshold).nonzero().flatten()
        if len(inside) == 0:
            inside = res.argmin().reshape(1)
        order = inside[torch.argsort(res[inside])].tolist()
        ids_, res_ = ids.tolist(), res.tolist()
        out.append([(int(ids_[i]), float(res_[i])) for i in order])
    return out, threshold
