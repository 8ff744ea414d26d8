"""Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, NeurIPS 2020).

Threat model: the shared gradient, the same model and the batch size; labels known if declared,
otherwise recovered analytically from the last layer (as iDLG; `assumed` says which).

Method: match the *direction* of the gradient (cosine distance, so the scale of the dummy
gradient does not matter) plus a total-variation prior, with Adam, the step size divided by 10
at 3/8, 5/8 and 7/8 of the steps, pixels boxed to the valid range after every step, and several
restarts of which the one with the lowest objective wins.

Arguments: `steps` (default 1000; the paper runs 4,800-24,000 on GPU), `lr` (0.1), `tv` (1e-4,
weight of the TV prior), `restarts` (1), `distance` ("cosine"), `optimizer` ("adam"), `seed`,
`snapshot_at`. The paper's signed-gradient Adam is not reproduced: the shared core runs plain Adam.
Shapes: pixels [B, C, H, W]; labels [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..core.matching import MatchConfig, match
from ..threat import Observation
from .base import ATTACKS, AttackOutput, MatchOptions
from .idlg import LABEL_SOURCE, infer_labels


@ATTACKS.register("ig")
@dataclass
class InvertingGradients(MatchOptions):
    name: ClassVar[str] = "ig"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "image": MatchConfig(optimizer="adam", steps=1000, lr=0.1, distance="cosine", lr_decay=True,
                             snapshot_at=(0, 50, 100, 250, 500, 1000), checkpoint_every=50),
    }

    snapshot_at: tuple[int, ...] | None = None
    tv: float = 1e-4
    box: bool = True

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        config = self.match_config(target.modality)
        known = observation.knowledge.labels
        labels = [int(y) for y in known] if known is not None else infer_labels(observation, target)
        problem = target.matching_problem(observation, labels=labels, tv=self.tv, box=self.box,
                                          label_source="known" if known is not None else LABEL_SOURCE)
        outcome = match(problem, observation.gradients, config, checkpoint=checkpoint, resume=resume,
                        progress=progress, key_extra=f"{self.name}:tv={self.tv}:box={self.box}")
        return AttackOutput(prediction=problem.decode(outcome.variables), method=self.name,
                            assumed=problem.assumed, config={**config.to_dict(), "tv": self.tv, "box": self.box},
                            outcome=outcome, details={"inferred_labels": None if known is not None else labels})
