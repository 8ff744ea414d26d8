"""TAG — Gradient Attack on Transformer-based Language Models (Deng et al., Findings of EMNLP 2021).

Threat model as DLG (attacks/dlg.py). Differences: the gradient distance is squared L2 plus
alpha * L1 (registered distance "tag", alpha = 0.01) over all shared layers, optimised with Adam;
as in every textleak text attack, labels the attacker was not told are first read off the
gradient (iDLG / output-bias rule) and the dummy tokens are decoded only to tokens the gradient
shows were present (word-embedding rows, or the first layer's input span).

Arguments: as DLG (`steps`, `lr`, `optimizer`, `distance`, `restarts`...) plus `restrict`
(use the leaked token set; default True).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..core.matching import MatchConfig, match
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .dlg import DLG
from .textprep import prepare_text


@ATTACKS.register("tag")
@dataclass
class TAG(DLG):
    name: ClassVar[str] = "tag"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "text": MatchConfig(optimizer="adam", lr=0.01, steps=100, distance="tag", lr_decay=True,
                            snapshot_at=(0, 25, 50, 100)),
    }
    restrict: bool = True

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        config = self.match_config(target.modality)
        obs, candidates, notes = prepare_text(observation, target, restrict=self.restrict)
        problem = target.matching_problem(obs, decode_metric=self.decode, candidates=candidates)
        outcome = match(problem, obs.gradients, config, checkpoint=checkpoint, resume=resume,
                        progress=progress, key_extra=self.name)
        return AttackOutput(prediction=problem.decode(outcome.variables), method=self.name,
                            assumed={**problem.assumed, **notes}, config=config.to_dict(), outcome=outcome)
