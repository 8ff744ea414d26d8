"""A float32 client's rounding taken out of a FedAvg update's layer spans (`exact-update` at small learning rates).

A client that steps float32 weights, w <- w - lr g, rounds each step to the nearest float32: a
step smaller than half an ulp of the weight is lost. The update U = (w0 - wK) / (lr K) then
differs from the average gradient G along the trajectory by at most half an ulp over lr in each
entry, |U - G| <= ulp(w) / (2 lr) (every step rounds by at most half an ulp, and K of them are
divided by K; the ulp taken at the larger of |w0|, |wK|). The capture records w0 - wK exactly
(two nearby float32 numbers subtract without rounding), so this is what the client's own training
lost, not the recording. Measured on MiniLM, CoLA dev batch 4, K = 8: that half-width's rms is
0.8x the rms gradient entry of layer 0's Q/K/V at lr 1e-4 and 8x at lr 1e-5 (it scales as 1/lr:
0.08x at 1e-3, 0.008x at 1e-2); most entries never move at 1e-5: ||U - G|| / ||G|| is 0.24 at
1e-4, 0.60 at 1e-5.

G of one layer has rank at most the number of its distinct inputs (the declared tokens), so the
span is read from the rank-r matrix closest to U that stays inside that box: alternating
projections (in float64) between the rank-r matrices (truncated SVD) and the box U +- ulp / (2 lr)
(clipping), the way quantised low-rank matrices are recovered. On the batch above at lr 1e-4 it
takes ||. - G|| / ||G|| from 0.24 to 0.05 (layer 0) and 0.18 to 0.05 (layer 1); at lr 1e-5 from
0.60 to 0.38: there most of the gradient is gone.

The span's basis comes from the fit; its tolerances stay those of U's plateau (the fit has rank r
exactly, so its own plateau says nothing about how far true inputs sit from it). Applied only
where the box is wide against U (`ROUNDING_SHARE`); the certificate is still the simulation
against U itself (`update_sim`).

The fit pays from lr ~1e-3 on (the box 0.07-0.10 of U's rms entry on MiniLM). On SST-2 dev batch 4,
K = 1, 4, lr 1e-3, it halves true sentences' layer-1 residuals (per token: 0.41 against 0.70 of
the floor^2 for the 44-token sentence, 0.05-0.17 against 0.09-0.24 for the others) and brings the
split "' s" of "it 's" into layer 0's candidates (squared residuals 0.018-0.022 against U's span,
above the spectral tolerance 0.1^2; 0.008-0.0098 against the fit's): the search that stopped 3-4 tokens short
of that sentence (ROUGE-1 0.97 / 0.98, uncertified) then finds the whole batch (certified). Where
the box is narrow (lr 1e-2: 0.007-0.008) the fit changes the spans by ~1e-3 relative and is
skipped, so lr 1e-2 runs as before.

At lr 1e-4 on longer batches the box pins G down much less (session 16, scratch diagnosis against a float64
replay of the client, dev batch 0, K 8): the fit's error is 0.174 (SST-2, 95 tokens) and 0.180 (RT, 123) at
layer 0 against U's 0.31 and 0.27, unchanged from 200 to 600 iterations, and rank 70 already fits the box to
5e-4: many rank-r matrices lie in it. Even the exact G ranks true tokens poorly at layer 0 (the inputs span
only the V + L directions a word plus a position embedding can make), and layer 1 prefers the wrong SST-2
sentences the search admits (per-token residuals 0.75-1.74 floors^2 against the true 0.59-4.06); only the
whole-update box misfit tells them apart (true batch 6e-16, one sentence swapped 5e-4 to 6e-3), at about
1,400 trials of 0.06-0.09 CPU s per repair sweep, so no repair sweep finished. Keeping layer 0's fit inside
the span of the inputs the leaked tokens can make took its error to 0.128 on both but did not read more
(SST-2 0.212 -> 0.304, RT 0.185, single runs; `recipes/measured/fedavg_lr4_s16/`) and was not kept.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ..text.layouts import Layout
from ..text.leaks.noise import NoisySpan, span_of

#: the rounding is taken out of a layer's span when the box's rms half-width is at least this
#: share of U's rms entry (see the module doc: ~0.008 at lr 1e-2, 0.07-0.10 at lr 1e-3, 0.3-0.8 at
#: lr 1e-4 on MiniLM; was 0.2 in session 10, which left lr 1e-3 unfitted)
ROUNDING_SHARE = 0.03
#: alternating projections per layer (the fit's distance to G settles within ~50 on MiniLM)
ITERATIONS = 60


def ulp(w: torch.Tensor) -> torch.Tensor:
    """The spacing of `w`'s dtype at each |w| (float64)."""
    a = w.detach().abs()
    return (torch.nextafter(a, torch.full_like(a, float("inf"))) - a).double()


def rounding_box(start: torch.Tensor, update: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """Half-width of the box around U that holds the average gradient: ulp(w) / (2 lr), at the larger
    end of the trajectory, plus the relative rounding of lr g and of the division (float32 eps)."""
    end = (start.double() - (lr * steps) * update.double()).to(start.dtype)
    big = torch.maximum(start.detach().abs(), end.abs())
    eps = float(torch.finfo(start.dtype).eps)
    return ulp(big) / (2 * lr) + eps * update.double().abs()


def fit_in_box(U: torch.Tensor, half: torch.Tensor, rank: int, iterations: int = ITERATIONS) -> torch.Tensor:
    """The rank-`rank` matrix reached by alternating projections between the rank-`rank` matrices
    and the box U +- half (float64)."""
    lo, hi = U - half, U + half
    Z, low = U.clone(), U
    for _ in range(iterations):
        u, s, vh = torch.linalg.svd(Z, full_matrices=False)
        low = (u[:, :rank] * s[:rank]) @ vh[:rank]
        Z = torch.minimum(torch.maximum(low, lo), hi)
    return low


class RoundingFits:
    """Layer spans of an update whose float32 rounding is taken out (see the module doc).

    layout: the model at w0; update: U by parameter name; lr, steps: the client's; bounds: the rank
    bound per layer (the declared tokens). `span(layer, raw)` returns `raw` (U's span) with its basis
    from the fit, or `raw` itself where the rounding is narrow."""

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lr: float, steps: int):
        self.layout, self.update, self.lr, self.steps = layout, update, lr, steps
        self.params = dict(layout.model.named_parameters())
        self.fits: dict[int, torch.Tensor | None] = {}
        self.shares: dict[int, float] = {}
        #: (parameter name, rank) -> the row basis of its update's rank-r fit in the box (`row_basis`)
        self.rows: dict[tuple[str, int], torch.Tensor] = {}

    def matrices(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        names = self.layout.shared(self.update, self.layout.qkv_names(layer))
        U = torch.cat([self.update[n].to(self.layout.device).double() for n in names], 0)
        half = torch.cat([rounding_box(self.params[n], self.update[n].to(self.params[n].device), self.lr, self.steps)
                          for n in names], 0).to(U.device)
        return U, half

    def share(self, layer: int) -> float:
        """rms half-width of the box over U's rms entry."""
        if layer not in self.shares:
            U, half = self.matrices(layer)
            self.shares[layer] = float(half.pow(2).mean().sqrt() / U.pow(2).mean().sqrt().clamp_min(1e-300))
        return self.shares[layer]

    def span(self, layer: int, raw: NoisySpan, rank: int | None) -> NoisySpan:
        if rank is None or self.share(layer) < ROUNDING_SHARE:
            return raw
        if layer not in self.fits:
            U, half = self.matrices(layer)
            self.fits[layer] = fit_in_box(U, half, rank)
        fitted = span_of(self.fits[layer], layer, rank_bound=raw.rank, keep_bound=True)
        return replace(raw, basis=fitted.basis, _basis32=None)

    def row_basis(self, name: str, rank: int) -> torch.Tensor:
        """[H_in, rank] orthonormal (float64): the row space of the rank-`rank` matrix closest to the update of
        parameter `name` in its box (`fit_in_box`), fitted once per run (`update_cls.ClsSpans.of`: the [CLS]
        descent and the token repair's screen read the same sites)."""
        if (name, rank) not in self.rows:
            U = self.update[name].double()
            p = self.params[name]
            half = rounding_box(p, self.update[name].to(p.device), self.lr, self.steps).double().to(U.device)
            vh = torch.linalg.svd(fit_in_box(U, half, rank), full_matrices=False)[2]
            self.rows[(name, rank)] = vh[:rank].T.contiguous()
        return self.rows[(name, rank)]

    def describe(self) -> dict[str, object]:
        return {"rounding_share": {k: round(v, 4) for k, v in self.shares.items()},
                "fitted_layers": sorted(k for k, v in self.fits.items() if v is not None),
                "threshold": ROUNDING_SHARE, "iterations": ITERATIONS}
