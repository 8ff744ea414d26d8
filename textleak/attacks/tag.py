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
from typing import ClassVar

from ..core.matching import MatchConfig
from .base import ATTACKS
from .dlg import DLG
from .optimisation import Preparation
from .textprep import TEXT_LEAKS


@ATTACKS.register("tag")
@dataclass
class TAG(DLG):
    """A preset of the optimisation template: text leaks first, then L2 + L1 matching with Adam."""

    name: ClassVar[str] = "tag"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "text": MatchConfig(optimizer="adam", lr=0.01, steps=100, distance="tag", lr_decay=True,
                            snapshot_at=(0, 25, 50, 100)),
    }
    PREPARE: ClassVar[dict[str, Preparation]] = {"text": TEXT_LEAKS}

    restrict: bool = True
