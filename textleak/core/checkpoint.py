"""Checkpoints of a matching run: where they go, who holds them, and how they are read back.

- `default_checkpoint(source, settings)`: `<source>.<hash>.ckpt` beside the gradient file, the hash
  naming the file and every setting of the run, so two recovers of one file with different
  settings never share a checkpoint, and the name can never be the gradient file itself or a
  file of the user's. If that folder is not writable, the same name under the user's cache
  folder; if neither is, None (the run keeps no checkpoint and says so).
- `CheckpointLock(path)`: one run at a time per checkpoint (an OS file lock, released if the
  process dies), so two identical recovers cannot clobber each other's progress.
- `save_checkpoint` writes atomically; a failed write (disk full, permissions changed) is
  reported once and the run goes on. `load_checkpoint` reads with `weights_only=True` and
  refuses anything that is not a textleak checkpoint of the same run, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import InputError, OutputError
from ..io import atomic_write

CHECKPOINT_VERSION = 1
SUFFIX = ".ckpt"


def cache_dir() -> Path:
    base = os.environ.get("TEXTLEAK_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "textleak"


def writable_dir(folder: Path, *, create: bool = False) -> bool:
    """Whether a file can be created in `folder` (tried, not guessed from mode bits); `create`
    makes the folder first (textleak's own cache folders only)."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".textleak-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def default_checkpoint(source: str | Path, settings: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    """(checkpoint path or None, a note for the user or None) for a run on gradient file `source`."""
    source = Path(source).resolve()
    blob = json.dumps({"file": str(source), **settings}, sort_keys=True, default=str)
    name = f"{source.name}.{hashlib.sha256(blob.encode()).hexdigest()[:10]}{SUFFIX}"
    if writable_dir(source.parent):
        return source.parent / name, None
    fallback = cache_dir() / "checkpoints"
    if writable_dir(fallback, create=True):
        return fallback / name, f"{source.parent} is not writable; the checkpoint goes to {fallback / name}"
    return None, f"neither {source.parent} nor {fallback} is writable: this run keeps no checkpoint"


class CheckpointLock:
    """Hold `path` for this process; a second holder gets a one-line InputError at once."""

    def __init__(self, path: str | Path):
        from filelock import FileLock

        self.path = Path(path).resolve()
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        folder = cache_dir() / "locks"
        if not writable_dir(folder, create=True):
            folder = Path(tempfile.gettempdir()) / "textleak-locks"
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(folder / f"{digest}.lock"), timeout=0)

    def __enter__(self) -> "CheckpointLock":
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise InputError(f"checkpoint {self.path} is in use by another run of the same recover; "
                             "wait for it to finish, or give this run its own --checkpoint") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


_failed_writes: set[str] = set()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> bool:
    """Write `state` atomically; on failure say so once per path and return False."""
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **state}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, OutputError) as exc:
        if str(path) not in _failed_writes:
            _failed_writes.add(str(path))
            print(f"textleak: note: cannot write checkpoint {path} ({getattr(exc, 'strerror', None) or exc}); "
                  "the run goes on without it", file=sys.stderr)
        return False
    return True


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a textleak checkpoint (read without its tensors' data)."""
    try:
        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # anything torch cannot read as a weights-only archive is not ours
        return False
    return isinstance(state, dict) and "checkpoint_version" in state


def load_checkpoint(path: str | Path, *, key: str) -> dict[str, Any] | None:
    """The saved state if `path` exists; `key` must match the run that wrote it."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise InputError(f"cannot resume from {path}: it is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say so rather than resume garbage
        raise InputError(f"cannot resume from {path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "checkpoint_version" not in state:
        raise InputError(f"cannot resume from {path}: it is not a textleak checkpoint")
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise InputError(f"cannot resume from {path}: checkpoint version {state.get('checkpoint_version')!r}")
    if state.get("key") != key:
        raise InputError(
            f"cannot resume from {path}: it belongs to another run (other gradients or settings)"
        )
    bad = [k for k, kind in _FIELDS.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
    if bad:
        raise InputError(f"cannot resume from {path}: its field {bad[0]!r} is missing or of the wrong type")
    return state


#: what `core.matching.match` keeps in a checkpoint besides tensors
_FIELDS = {"restart": int, "step": int, "history": list, "snapshots": list, "diverged": list,
           "elapsed": (int, float), "evaluations": int}
