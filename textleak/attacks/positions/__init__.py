"""The `positions` attack (train-mode steps): see `attack.py`."""

from .attack import Positions

__all__ = ["Positions"]
