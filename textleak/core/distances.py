"""Gradient distances, registered by name.

Each takes two equally long lists of tensors (dummy gradients, observed gradients) and
returns a scalar tensor that is differentiable in the dummy gradients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..registry import Registry

Distance = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]
DISTANCES: Registry[Distance] = Registry("gradient distance")


@DISTANCES.register("l2")
def squared_l2(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    """DLG (Zhu et al. 2019): sum of squared differences over all matched parameters."""
    return sum(((d - o) ** 2).sum() for d, o in zip(dummy, observed))


@DISTANCES.register("l2-layer")
def layer_normalised_l2(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared L2 per parameter tensor, each divided by its observed squared norm.

    Plain L2 lets the largest gradients (often a freshly initialised head) drown the layers that
    carry the input; this gives every parameter tensor the same say.
    """
    return sum(((d - o) ** 2).sum() / ((o ** 2).sum() + 1e-30) for d, o in zip(dummy, observed)) / len(observed)


@DISTANCES.register("cosine")
def cosine(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverting Gradients (Geiping et al. 2020): 1 - cosine of the concatenated gradients."""
    dot = sum((d * o).sum() for d, o in zip(dummy, observed))
    dn = sum((d * d).sum() for d in dummy)
    on = sum((o * o).sum() for o in observed)
    return 1 - dot / (dn.sqrt() * on.sqrt() + 1e-12)


def tag_distance(alpha: float) -> Distance:
    """TAG (Deng et al. 2021): squared L2 plus alpha times L1."""

    def distance(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(((d - o) ** 2).sum() + alpha * (d - o).abs().sum() for d, o in zip(dummy, observed))

    return distance


DISTANCES.register("tag")(tag_distance(0.01))
