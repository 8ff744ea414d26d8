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

`dpeps:EPSILON[,MAX_GRAD_NORM[,STEPS[,SAMPLE_RATE[,DELTA]]]]` is DP-SGD configured by its
privacy budget: the noise multiplier that makes STEPS noisy steps at Poisson SAMPLE_RATE
(epsilon, DELTA)-DP by Opacus' RDP accountant (`get_noise_multiplier`). Defaults: max_grad_norm
1, 1000 steps at sample rate 0.01 (10 epochs), delta 1e-5. Its strength axis is epsilon, where
smaller is stronger, so audits read leakage against epsilon ("at epsilon 8 the strongest attack
recovers ROUGE-1 X"). Without the `dp` extra it is a one-line error naming it.
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
    adds_noise = True
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

    def noise_std(self, batch_size: int = 1) -> float:
        """The standard deviation of the noise on each shared coordinate (after the mean over the batch)."""
        return self.noise_multiplier * self.max_grad_norm / batch_size

    def epsilon(self, *, steps: int, sample_rate: float, delta: float) -> float:
        """(epsilon, delta)-DP after `steps` noisy steps at Poisson `sample_rate`, by Opacus' RDP accountant."""
        RDPAccountant = _opacus().RDPAccountant
        if not (0 < sample_rate <= 1 and 0 < delta < 1 and steps >= 0):
            raise InputError("need 0 < sample_rate <= 1, 0 < delta < 1 and steps >= 0")
        if self.noise_multiplier == 0:
            return float("inf")
        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, sample_rate, steps)] if steps else []
        return float(accountant.get_epsilon(delta=delta))


def _opacus():
    """Opacus' accountants module, or a one-line error naming the extra that installs it."""
    try:
        from opacus import accountants
        from opacus.accountants import utils  # noqa: F401  (get_noise_multiplier)
    except ImportError:
        raise InputError("epsilon accounting needs Opacus: pip install 'textleak[dp]'") from None
    return accountants


@DEFENCES.register("dpeps")
class DPEpsilon(DPSGD):
    """DP-SGD at a privacy budget: the noise multiplier comes from (epsilon, delta, steps, sample rate)."""

    name = "dpeps"
    params = (Param("epsilon", float, 0.0, 1e12, low_open=True),
              Param("max_grad_norm", float, 0.0, 1000.0, low_open=True, default=1.0),
              Param("steps", int, 1, 10_000_000, default=1000),
              Param("sample_rate", float, 0.0, 1.0, low_open=True, default=0.01),
              Param("delta", float, 0.0, 0.5, low_open=True, default=1e-5))
    #: a smaller epsilon is a stronger defence
    strength_grows = False
    epsilon: float  # the budget (on this class a number, not DPSGD's accounting method)
    steps: int
    sample_rate: float
    delta: float

    def __init__(self, *values: float | int):
        super().__init__(*values)
        get_noise_multiplier = _opacus().utils.get_noise_multiplier
        try:
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
                steps=self.steps, accountant="rdp"))
        except ValueError as exc:
            raise InputError(f"defence {self.spec}: no noise multiplier reaches epsilon {self.epsilon:g} "
                             f"({str(exc).splitlines()[0]})") from None

    @property
    def spec(self) -> str:
        values = list(self.values)
        while len(values) > 1 and values[-1] == self.params[len(values) - 1].default:
            values.pop()
        return f"{self.name}:" + ",".join(f"{v:g}" for v in values)

    @property
    def strength(self) -> float:
        return float(self.epsilon)

    @property
    def strength_label(self) -> str:
        return "epsilon"

    def describe(self):
        return {**super().describe(), "noise_multiplier": self.noise_multiplier,
                "accounting": {"epsilon": self.epsilon, "delta": self.delta, "steps": self.steps,
                               "sample_rate": self.sample_rate, "accountant": "Opacus RDP"}}
