"""Scoring against what the found sentences leave, where nothing peels them off the gradient.

In reduced precision (`precision.RoundedSpan`) and under additive noise (`noise.NoisySpan`) a found
sentence cannot be subtracted from the shared gradient exactly, so its inputs stay in the layer
span, and inputs of that sentence in slightly other contexts (shifted, cut, extended) keep scoring
low: a search settles into copies of it. `FoundSpan.without` records a found sentence's layer
inputs; `score` then divides a candidate input's residual by the part of the input outside them
(at least `LEFT_FLOOR` of it, so no input's residual is amplified more than 16 times), not by the
whole input. A true input of a missing sentence keeps much of its length outside the found inputs
(measured in fp16, CoLA dev batch 8: 0.21-0.82) and a copy's inputs little (0.02-0.13). Only the
search's ranking changes: whole-sentence residuals, and so every certificate, are measured against
the whole span."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..layouts import Layout
from .spans import LayerSpan

#: the least share of an input counted as outside the found sentences' inputs when scoring
LEFT_FLOOR = 1 / 16


@dataclass
class FoundSpan(LayerSpan):
    """A `LayerSpan` that also scores against the found sentences' layer inputs."""

    #: the found sentences' layer inputs (as measured) [f, H], and an orthonormal basis of them [H, f]
    found: torch.Tensor | None = None
    found_basis: torch.Tensor | None = None

    def measured(self, h: torch.Tensor) -> torch.Tensor:
        """An input as the span measures it (a reduced precision rounds it first)."""
        return h

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """The residual over the part of h outside the found sentences' inputs (at least
        `LEFT_FLOOR` of h): what the search ranks by once sentences are found."""
        if self.found_basis is None:
            return self.residual(h, precise=False)
        h = self.measured(h).float()
        Q = self.found_basis.to(h.device, torch.float32)
        left = (h - (h @ Q) @ Q.T).norm(dim=-1)
        return self.residual(h, precise=False) * h.norm(dim=-1) / torch.maximum(left, LEFT_FLOOR * h.norm(dim=-1)
                                                                               ).clamp_min(1e-30)

    def without(self, layout: Layout, sequence: Sequence[int]) -> "FoundSpan":
        """This span, scoring also against `sequence`'s inputs (found; nothing peels it off)."""
        ids = torch.tensor([list(sequence)], device=layout.device)
        with torch.no_grad():
            h = layout.layer_inputs(ids, torch.ones_like(ids), self.layer)[0]
        h = self.measured(h).double()
        rows = h if self.found is None else torch.cat([self.found, h.to(self.found.device)])
        u, s, _ = torch.linalg.svd(rows.T, full_matrices=False)
        basis = u[:, : int((s > s[0] * 1e-6).sum())]
        return replace(self, found=rows, found_basis=basis, _basis32=None)
