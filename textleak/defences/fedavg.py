"""FedAvg with several local steps (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017).

Threat model: a client runs `local_steps` SGD steps (learning rate `local_lr`) on its batch and
sends the weight difference; the server (the attacker) sees the update, not one gradient.

`fedavg:K[,LR]` e.g. `fedavg:4` (LR defaults to 1e-2). Valid: K in [1, 1000], LR in (0, 10].
What is shared is recorded as an *update*: (w0 - wK) / (LR * K), the average gradient along the
local trajectory, which equals the gradient exactly when K = 1. Attacks treat it as a gradient
of the batch at w0 (they match it with the one-step gradient of their dummy batch), so the
drift of the K - 1 later steps is what defends. The model's weights are restored afterwards.
"""

from __future__ import annotations

import torch

from .base import DEFENCES, BatchGradients, Defence, Param


@DEFENCES.register("fedavg")
class FedAvg(Defence):
    name = "fedavg"
    stage = "capture"
    shares = "update"
    params = (Param("local_steps", int, 1, 1000), Param("local_lr", float, 0.0, 10.0, low_open=True, default=1e-2))
    local_steps: int
    local_lr: float

    def share(self, compute: BatchGradients, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return compute.local_update(int(self.local_steps), float(self.local_lr))
