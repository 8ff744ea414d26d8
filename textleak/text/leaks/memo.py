"""What the leaks compute more than once from one tensor, kept while that tensor lives.

One recovery reads the same large tensors several times: the word-embedding gradient
[V, H] and the embedding matrix in double precision (the token set, a tied head's states and
the placements each convert them: 94 MB and about 0.1 CPU s apiece at MiniLM's vocabulary), and a
tied head's token set (read by the vocabulary, the head-state fit and the placements). `memo`
keys a result by the tensor's identity and version (an in-place change is a new version) and
drops it when the tensor is freed, so nothing outlives the gradient it came from.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

_CACHE: dict[tuple[str, int], tuple[Any, int, Any]] = {}


def memo(tensor: torch.Tensor, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()`, or what it returned for this `tensor` (same object, same version) under `key`."""
    slot = (key, id(tensor))
    hit = _CACHE.get(slot)
    if hit is not None and hit[0]() is tensor and hit[1] == tensor._version:
        return hit[2]
    value = compute()
    fresh = slot not in _CACHE
    _CACHE[slot] = (weakref.ref(tensor), tensor._version, value)
    if fresh:
        weakref.finalize(tensor, _CACHE.pop, slot, None)
    return value


def as_double(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor.double()` (detached), converted once per tensor version. Treat it as read-only."""
    return memo(tensor, "double", lambda: tensor.detach().double())
