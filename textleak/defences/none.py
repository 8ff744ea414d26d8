"""`none`: the undefended baseline; the shared gradient is the batch gradient itself."""

from __future__ import annotations

from typing import Mapping

import torch

from .base import DEFENCES, Defence


@DEFENCES.register("none")
class NoDefence(Defence):
    name = "none"

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in gradients.items()}
