"""Larger batches (Zhu et al., DLG 2019, Sec. 5; Geiping et al., "Inverting Gradients", 2020).

Threat model: the shared gradient is the mean over `size` examples, so each example's signal is
mixed with the others'; the attacker must recover all of them at once (and is told the batch
size). `batch:N` with N in [1, 512] fixes the batch the victim shares: a sweep puts the
attacked sentence with N - 1 others; `capture_gradients(..., defence="batch:8")` requires a
batch of exactly 8. The gradient itself is left as it is.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import DEFENCES, Defence, Param


@DEFENCES.register("batch")
class LargerBatch(Defence):
    name = "batch"
    params = (Param("size", int, 1, 512),)
    size: int

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in gradients.items()}

    def required_batch_size(self) -> int:
        return int(self.size)
