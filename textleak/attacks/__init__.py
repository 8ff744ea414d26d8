"""Attacks, one module each, registered by name in `ATTACKS`."""

from .base import ATTACKS, Attack, AttackOutput
from . import dlg  # noqa: F401  (registers)

__all__ = ["ATTACKS", "Attack", "AttackOutput"]
