"""Attacks, one module each, registered by name in `ATTACKS`."""

from .base import ATTACKS, Attack, AttackOutput
from . import dlg  # noqa: F401  (registers)
from . import exact  # noqa: F401
from . import beyond_rank  # noqa: F401
from . import bags  # noqa: F401  (#16: large batches)
from . import update, adamw, noisy, likelihood, likelihood_batch  # noqa: F401  (#15: FedAvg updates, noise)
from . import positions  # noqa: F401
from . import tag  # noqa: F401
from . import lamp  # noqa: F401
from . import auto  # noqa: F401
from . import idlg, inverting_gradients  # noqa: F401  (register)

__all__ = ["ATTACKS", "Attack", "AttackOutput"]
