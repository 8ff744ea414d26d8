"""FedAvg with several local steps (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017).

Threat model: a client runs `local_steps` optimiser steps (learning rate `local_lr`) on its data
and sends the weight difference; the server (the attacker) sees the update, not one gradient,
and knows the learning rate and step count it configured (recorded with the update).

`fedavg:K[,LR[,MB[,SHUFFLE]]]`: K SGD steps (LR defaults to 1e-2) on the whole batch, or, with
MB > 0, on its mini-batches of MB examples in turn: E local epochs of ceil(B / MB) mini-batches
make K = E x ceil(B / MB) steps. SHUFFLE 0 (default): every epoch takes the mini-batches in the
batch's order; 1: every epoch reshuffles the batch first (a DataLoader with shuffle=True), with
the capture's seeded generator: the server knows that it happened (public configuration), not
the order. Valid: K in [1, 1000], LR in (0, 10], MB in [0, 1024] (0: the whole batch), SHUFFLE
0 or 1.
`fedadamw:K[,LR[,MB[,WD[,SHUFFLE]]]]`: the same with AdamW (PyTorch's defaults, weight decay WD,
default 0 as in HF's Trainer; a fresh optimiser state per round, as FL clients start each round),
the optimiser HF fine-tuning uses.

What is shared is recorded as an *update*: (w0 - wK) / (LR * K). For SGD it is the average
gradient along the local trajectory, equal to the gradient when K = 1; `exact` reads it at the
trajectory's midpoint (`textleak.attacks.update`). The model's weights are restored afterwards.
"""

from __future__ import annotations

import torch

from .base import DEFENCES, BatchGradients, Defence, Param

STEPS = Param("local_steps", int, 1, 1000)
LR = Param("local_lr", float, 0.0, 10.0, low_open=True, default=1e-2)
MINIBATCH = Param("minibatch", int, 0, 1024, default=0)
SHUFFLE = Param("shuffle", int, 0, 1, default=0)


def epoch_schedule(size: int, minibatch: int | None, steps: int, shuffle: bool = False,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """The example indices of each of the K local steps: mini-batches of `minibatch` taken in turn,
    epoch after epoch (each epoch a fresh permutation of the batch when `shuffle`)."""
    if not minibatch or minibatch >= size:
        return [list(range(size))] * steps
    out: list[list[int]] = []
    while len(out) < steps:
        order = torch.randperm(size, generator=generator).tolist() if shuffle else list(range(size))
        out += [sorted(order[i:i + minibatch]) for i in range(0, size, minibatch)]
    return out[:steps]


@DEFENCES.register("fedavg")
class FedAvg(Defence):
    name = "fedavg"
    stage = "capture"
    shares = "update"
    optimizer = "sgd"
    params = (STEPS, LR, MINIBATCH, SHUFFLE)
    local_steps: int
    local_lr: float
    minibatch: int
    shuffle: int

    def share(self, compute: BatchGradients, generator: torch.Generator) -> dict[str, torch.Tensor]:
        schedule = epoch_schedule(compute.size, int(self.minibatch) or None, int(self.local_steps),
                                  bool(self.shuffle), generator)
        return compute.local_update(int(self.local_steps), float(self.local_lr), int(self.minibatch) or None,
                                    self.optimizer, float(getattr(self, "weight_decay", 0.0)), schedule)

    @property
    def spec(self) -> str:
        """K and LR always; the mini-batch size and weight decay only when set."""
        values = list(self.values)
        while len(values) > 2 and values[-1] == self.params[len(values) - 1].default:
            values.pop()
        return f"{self.name}:" + ",".join(f"{v:g}" for v in values)

    def describe(self):
        return {**super().describe(), "optimizer": self.optimizer}


@DEFENCES.register("fedadamw")
class FedAdamW(FedAvg):
    name = "fedadamw"
    optimizer = "adamw"
    params = (STEPS, Param("local_lr", float, 0.0, 10.0, low_open=True, default=1e-4), MINIBATCH,
              Param("weight_decay", float, 0.0, 1.0, default=0.0), SHUFFLE)
    weight_decay: float
