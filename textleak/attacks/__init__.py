"""Attacks, one module each, registered by name in `ATTACKS`."""

from .base import ATTACKS, Attack, AttackOutput
from . import dlg  # noqa: F401  (registers)
from . import idlg, inverting_gradients  # noqa: F401  (register)

__all__ = ["ATTACKS", "Attack", "AttackOutput"]
