"""Gradient pruning by magnitude (Zhu et al., "Deep Leakage from Gradients", 2019, Sec. 5;
Lin et al., "Deep Gradient Compression", 2018).

Threat model: the victim shares only the largest-magnitude entries of each gradient tensor and
zeros the rest; the attacker matches the sparse gradient as it is.

`prune:P` zeros the fraction P of entries with the smallest |g| in every parameter tensor
(per tensor, as in deep gradient compression; DLG sweeps P = 1% .. 90%). Valid P: [0, 1).
Ties at the threshold are broken by index, so exactly floor(P * numel) entries are zeroed.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import DEFENCES, Defence, Param


@DEFENCES.register("prune")
class Prune(Defence):
    name = "prune"
    params = (Param("fraction", float, 0.0, 0.999),)
    fraction: float

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = {}
        for k, g in gradients.items():
            flat = g.detach().reshape(-1).clone()
            drop = int(self.fraction * flat.numel())
            if drop:
                smallest = torch.topk(flat.abs(), drop, largest=False, sorted=False).indices
                flat[smallest] = 0
            out[k] = flat.view_as(g)
        return out
