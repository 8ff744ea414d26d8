"""Additive noise on the shared gradient (Zhu et al., "Deep Leakage from Gradients", 2019, Sec. 5).

Threat model: the victim perturbs every coordinate of the gradient it shares with i.i.d. noise;
the attacker matches the noisy gradient as if it were clean.

`noise:VAR`   Gaussian N(0, VAR) per coordinate (DLG sweeps VAR = 1e-4 .. 1e-1).
`laplace:VAR` Laplacian with the same variance VAR, i.e. scale b = sqrt(VAR / 2).
Valid VAR: (0, 1]. Shapes are kept; noise is drawn in the gradient's dtype from the caller's generator.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .base import DEFENCES, Defence, Param

VARIANCE = Param("variance", float, 0.0, 1.0, low_open=True)


@DEFENCES.register("noise")
class GaussianNoise(Defence):
    name = "noise"
    adds_noise = True
    params = (VARIANCE,)
    variance: float

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        std = math.sqrt(self.variance)
        # in place on the fresh noise: the same values as g + noise * std, without two more
        # model-sized temporaries per step (a fine-tune under noise draws this every step)
        return {k: torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device).mul_(std).add_(g)
                for k, g in gradients.items()}


@DEFENCES.register("laplace")
class LaplacianNoise(Defence):
    name = "laplace"
    adds_noise = True
    params = (VARIANCE,)
    variance: float

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        scale = math.sqrt(self.variance / 2.0)
        out = {}
        for k, g in gradients.items():
            # Inverse-CDF sampling from the caller's generator (torch.distributions takes no generator).
            u = torch.rand(g.shape, generator=generator, dtype=g.dtype).to(g.device) - 0.5
            u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
            out[k] = g - scale * torch.sign(u) * torch.log1p(-2 * u.abs())
        return out
