"""Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, NeurIPS 2020).

Threat model: the shared gradient, the same model and the batch size; labels known if declared,
otherwise recovered analytically from the last layer (as iDLG; `assumed` says which).

Method: match the *direction* of the gradient (cosine distance, so the scale of the dummy
gradient does not matter) plus a total-variation prior, with Adam, the step size divided by 10
at 3/8, 5/8 and 7/8 of the steps, pixels boxed to the valid range after every step, and several
restarts of which the one with the lowest objective wins.

Arguments: `steps` (default 1000; the paper runs 4,800-24,000 on GPU), `lr` (0.1), `tv` (1e-4,
weight of the TV prior), `restarts` (1), `distance` ("cosine"), `optimizer` ("adam"), `seed`,
`snapshot_at`. A preset of the optimisation template (attacks/optimisation.py) with iDLG's
label preparation. The paper's signed-gradient Adam is not reproduced: the shared core runs plain Adam.
Shapes: pixels [B, C, H, W]; labels [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.matching import MatchConfig, MatchingProblem
from .base import ATTACKS
from .idlg import LAST_LAYER_LABELS
from .optimisation import GradientMatching, Preparation


@ATTACKS.register("ig")
@dataclass
class InvertingGradients(GradientMatching):
    name: ClassVar[str] = "ig"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "image": MatchConfig(optimizer="adam", steps=1000, lr=0.1, distance="cosine", lr_decay=True,
                             snapshot_at=(0, 50, 100, 250, 500, 1000), checkpoint_every=50),
    }
    PREPARE: ClassVar[dict[str, Preparation]] = {"image": LAST_LAYER_LABELS}

    tv: float = 1e-4
    box: bool = True

    def problem_options(self, modality: str) -> dict[str, Any]:
        return {"tv": self.tv, "box": self.box}

    def settings(self, problem: MatchingProblem) -> dict[str, Any]:
        return {"tv": self.tv, "box": self.box}
