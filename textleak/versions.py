"""Versions of textleak and the libraries that shape its numbers, recorded in every file."""

from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"
_LIBS = ("torch", "transformers", "tokenizers", "numpy", "datasets")


def versions() -> dict[str, str]:
    found = {"textleak": __version__, "python": platform.python_version()}
    for lib in _LIBS:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            found[lib] = "not installed"
    return found
