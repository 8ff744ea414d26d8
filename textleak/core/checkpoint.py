"""Checkpoints of a matching run, written atomically and read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import atomic_write

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, *, key: str) -> dict[str, Any] | None:
    """The saved state if `path` exists; `key` must match the run that wrote it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say so rather than resume garbage
        raise InputError(f"cannot resume from {path}: unreadable checkpoint ({type(exc).__name__})") from None
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise InputError(f"cannot resume from {path}: checkpoint version {state.get('checkpoint_version')}")
    if state.get("key") != key:
        raise InputError(
            f"cannot resume from {path}: it belongs to another run (other gradients or settings)"
        )
    return state
