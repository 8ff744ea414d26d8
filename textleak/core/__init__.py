"""Modality-free gradient matching: distances, the optimisation loop, checkpoints, seeds.

Nothing here knows about text or images: a `MatchingProblem` supplies the variables to
optimise and how to turn them into gradients; the loop only matches gradients.
"""

from .distances import DISTANCES
from .matching import MatchConfig, MatchingProblem, MatchOutcome, match

__all__ = ["DISTANCES", "MatchConfig", "MatchingProblem", "MatchOutcome", "match"]
