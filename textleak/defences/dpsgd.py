"""DP-SGD: per-example clipping plus Gaussian noise (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016), with Opacus' parameter names.

Threat model: the victim clips each example's gradient to L2 norm `max_grad_norm` (over all
parameters together, Opacus' "flat" clipping), sums them, adds N(0, (noise_multiplier *
max_grad_norm)^2) to every coordinate and divides by the batch size; the attacker sees only that.

`dpsgd:MAX_GRAD_NORM,NOISE_MULTIPLIER` e.g. `dpsgd:1.0,1.1`. Valid: max_grad_norm in (0, 1000],
noise_multiplier in [0, 100]. Clipping needs per-example gradients, so the defence acts at
capture time (`share`), one backward pass per example. `apply` on a finished gradient treats it
as ONE example's gradient: exact DP-SGD only for batches of one (what `apply_to_model_grads`
enforces). `epsilon()` uses Opacus' RDP accountant when the optional extra `dp` is installed.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import InputError
from .base import DEFENCES, BatchGradients, Defence, Param, global_norm


@DEFENCES.register("dpsgd")
class DPSGD(Defence):
    name = "dpsgd"
    stage = "capture"
    per_example = True
    params = (Param("max_grad_norm", float, 0.0, 1000.0, low_open=True),
              Param("noise_multiplier", float, 0.0, 100.0, default=1.0))
    max_grad_norm: float
    noise_multiplier: float

    @property
    def strength(self) -> float:
        return float(self.noise_multiplier)

    @property
    def strength_label(self) -> str:
        return "noise_multiplier"

    def clip(self, gradients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        norm = float(global_norm(gradients))
        factor = min(1.0, self.max_grad_norm / (norm + 1e-6))  # Opacus' clip factor
        return {k: g * factor for k, g in gradients.items()}

    def noisy_mean(self, clipped_sum: Mapping[str, torch.Tensor], batch_size: int,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        std = self.noise_multiplier * self.max_grad_norm
        return {k: (g + torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device) * std)
                / batch_size for k, g in clipped_sum.items()}

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.noisy_mean(self.clip(gradients), 1, generator)

    def share(self, compute: BatchGradients, generator: torch.Generator) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        for i in range(compute.size):
            for k, g in self.clip(compute.example(i)).items():
                total[k] = total[k] + g if k in total else g
        return self.noisy_mean(total, compute.size, generator)

    def epsilon(self, *, steps: int, sample_rate: float, delta: float) -> float:
        """(epsilon, delta)-DP after `steps` noisy steps at Poisson `sample_rate`, by Opacus' RDP accountant."""
        try:
            from opacus.accountants import RDPAccountant
        except ImportError:
            raise InputError("epsilon accounting needs Opacus: pip install 'textleak[dp]'") from None
        if not (0 < sample_rate <= 1 and 0 < delta < 1 and steps >= 0):
            raise InputError("need 0 < sample_rate <= 1, 0 < delta < 1 and steps >= 0")
        if self.noise_multiplier == 0:
            return float("inf")
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, sample_rate, steps)] if steps else []
        return float(accountant.get_epsilon(delta=delta))
