"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Threat model: an honest-but-curious party sees one shared gradient (keyed by parameter name) and
holds the same model. It is declared to know the batch size and, for text, each sequence length
(and, for masked-LM, which positions were masked); labels are optimised jointly as soft
distributions unless declared known.

Method: draw dummy inputs (text: embeddings fed through `inputs_embeds`, shape [B, L, H]; images:
pixels [B, C, H, W]) and dummy label logits ([B, C] classes, or [M, V] for M masked positions),
then minimise the squared L2 distance between their gradient and the observed one with L-BFGS.
Text is decoded to the nearest row of the input-embedding matrix (cosine or L2).

Arguments: `steps`, `restarts`, `optimizer`, `lr`, `distance`, `line_search`, `seed` override the
modality's defaults in `DEFAULTS`; `decode` picks the text decoding metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.matching import MatchConfig
from .base import ATTACKS
from .optimisation import GradientMatching


@ATTACKS.register("dlg")
@dataclass
class DLG(GradientMatching):
    """A preset of the optimisation template (attacks/optimisation.py): the observation as given."""

    name: ClassVar[str] = "dlg"
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "text": MatchConfig(optimizer="lbfgs", steps=30, distance="l2", line_search="strong_wolfe",
                            snapshot_at=(0, 10, 20, 30)),
        "image": MatchConfig(optimizer="lbfgs", steps=300, distance="l2",
                             snapshot_at=(0, 10, 30, 60, 100, 200, 300)),
    }

    decode: str = "cosine"

    def problem_options(self, modality: str) -> dict[str, Any]:
        return {"decode_metric": self.decode} if modality == "text" else {}
