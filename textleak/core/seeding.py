"""Seeds and state that a run must leave as it found them (RNG streams, train/eval mode)."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch RNG states on exit, so a library call leaves no trace."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with all global RNGs seeded, then put the caller's RNG states back."""
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, *, train: bool) -> Iterator[torch.nn.Module]:
    """Put a model in train or eval mode for a block and restore every submodule's own mode."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.train(train)
    try:
        yield model
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
