"""What the leaks compute more than once from one tensor, kept while that tensor lives.

One recovery reads the same large tensors several times: the word-embedding gradient
[V, H] and the embedding matrix in double precision (the token set, a tied head's states and
the placements each convert them: 94 MB and about 0.1 CPU s apiece at MiniLM's vocabulary), and a
tied head's token set (read by the vocabulary, the head-state fit and the placements). `memo`
keys a result by the tensor's identity and version (an in-place change is a new version) and
drops it when the tensor is freed, so nothing outlives the gradient it came from. A result read off
several tensors (the noise level, a layer's span) names the others in `also`: it is reused only while
each of them is the same object at the same version.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence

import torch

_CACHE: dict[tuple[str, int], tuple[Any, int, Any, tuple]] = {}


def _same(stamps: tuple, tensors: Sequence[torch.Tensor]) -> bool:
    return len(stamps) == len(tensors) and all(ref() is t and version == t._version
                                               for (ref, version), t in zip(stamps, tensors))


def memo(tensor: torch.Tensor, key: str, compute: Callable[[], Any], also: Sequence[torch.Tensor] = ()) -> Any:
    """`compute()`, or what it returned for this `tensor` (same object, same version) under `key`, with
    the same `also` tensors (each the same object at the same version) where it read others too."""
    slot = (key, id(tensor))
    hit = _CACHE.get(slot)
    if hit is not None and hit[0]() is tensor and hit[1] == tensor._version and _same(hit[3], also):
        return hit[2]
    value = compute()
    fresh = slot not in _CACHE
    _CACHE[slot] = (weakref.ref(tensor), tensor._version, value, tuple((weakref.ref(t), t._version) for t in also))
    if fresh:
        weakref.finalize(tensor, _CACHE.pop, slot, None)
    return value


def as_double(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor.double()` (detached), converted once per tensor version. Treat it as read-only."""
    return memo(tensor, "double", lambda: tensor.detach().double())
