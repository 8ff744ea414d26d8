"""textleak: how much private text (and images) leak from shared training gradients.

Public API:
    capture_gradients(model, batch, ...) -> Capture        victim side: gradient + reference
    capture_image_gradients(model, images, labels=...)     the same for images
    recover(gradients=..., model=..., attack=...) -> RecoveryResult
    load_gradients(path) / save_gradients(path, GradientFile)
    ATTACKS, Knowledge, Observation, Reference, MatchConfig

The names load on first use (PEP 562), so `import textleak` and the command line start without
importing torch; `textleak --version` and an early Ctrl-C are then instant and clean.
"""

from __future__ import annotations

import importlib
import os as _os
import sys
import types

# OpenMP threads that wait for work sleep instead of spinning (libgomp spins by default). On a
# machine whose cores other jobs share, spinning waiters made a 2-thread run about 5x slower and
# burn 6x the CPU (issue 18). Read when torch loads, so set before it; a user's setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import TextleakError
from .versions import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "ATTACKS": ".attacks", "Capture": ".capture", "capture_gradients": ".capture", "MatchConfig": ".core",
    "DEFENCES": ".defences", "parse_defence": ".defences", "GradientFile": ".gradients",
    "load_gradients": ".gradients", "save_gradients": ".gradients", "capture_image_gradients": ".image.capture",
    "recover": ".recover", "RecoveryResult": ".result", "Knowledge": ".threat", "Observation": ".threat",
    "Reference": ".threat",
}

__all__ = sorted([*_EXPORTS, "TextleakError", "__version__"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'textleak' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Importing the submodule `textleak.recover` must not hide the function `textleak.recover`
    (the import system sets a package attribute for each submodule it loads)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f".{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
