"""textleak: how much private text (and images) leak from shared training gradients.

Public API:
    capture_gradients(model, batch, ...) -> Capture        victim side: gradient + reference
    capture_image_gradients(model, images, labels=...)     the same for images
    recover(gradients=..., model=..., attack=...) -> RecoveryResult
    load_gradients(path) / save_gradients(path, GradientFile)
    ATTACKS, Knowledge, Observation, Reference, MatchConfig
"""

import os as _os

# OpenMP threads that wait for work sleep instead of spinning (libgomp spins by default). On a
# machine whose cores other jobs share, spinning waiters made a 2-thread run about 5x slower and
# burn 6x the CPU (issue 18). Read when torch loads, so set before it; a user's setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .attacks import ATTACKS  # noqa: E402
from .capture import Capture, capture_gradients
from .core import MatchConfig
from .defences import DEFENCES, parse_defence
from .errors import TextleakError
from .gradients import GradientFile, load_gradients, save_gradients
from .image.capture import capture_image_gradients
from .recover import recover
from .result import RecoveryResult
from .threat import Knowledge, Observation, Reference
from .versions import __version__

__all__ = ["ATTACKS", "Capture", "DEFENCES", "parse_defence", "GradientFile", "Knowledge", "MatchConfig", "Observation",
           "RecoveryResult", "Reference", "TextleakError", "__version__", "capture_gradients", "capture_image_gradients",
           "load_gradients", "recover", "save_gradients"]
