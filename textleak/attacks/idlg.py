"""iDLG — Improved Deep Leakage from Gradients (Zhao, Mopuri & Bilen, arXiv 2001.02610, 2020).

Threat model: as DLG (the shared gradient, the same model, the batch size), but labels are not
known: they are read analytically from the gradient of the classifier's last linear layer, then
DLG runs on the pixels alone with those labels fixed (`assumed["labels"]` says so).

Label rule. With softmax cross-entropy the gradient of logit k is p_k - y_k, negative only for the
true class. The bias gradient is that vector itself; the weight gradient's row k is it times the
penultimate features, which sigmoid (or any non-negative) activations keep non-negative, so the
row sum has the same sign (the paper's rule). Batch size 1: the class with the most negative
entry. Batch B: the mean over the batch makes every class present negative; each negative class
gets one image and the remaining images go, one at a time, to the class whose gradient is least
explained by the images it already has (an LLG-style count, Wainakh et al. 2022).

Arguments: as DLG (`steps`, `restarts`, `lr`, `optimizer`, `distance`, `seed`, ...).
Shapes: pixels [B, C, H, W]; labels [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..core.matching import MatchConfig, match
from ..errors import MissingKnowledgeError
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .dlg import DLG

LABEL_SOURCE = "recovered analytically (iDLG, last-layer gradient)"


def label_signal(observation: Observation, target: Any) -> torch.Tensor:
    """Per-class gradient signal [K]: the bias gradient, else the weight gradient's row sums."""
    weight, bias = target.output_layer()
    if bias is not None and bias in observation.gradients:
        return observation.gradients[bias].detach().double().flatten()
    if weight in observation.gradients:
        return observation.gradients[weight].detach().double().sum(-1)
    raise MissingKnowledgeError(f"iDLG reads labels from the last layer's gradient ({weight}), "
                                "which the gradient file does not share")


def infer_labels(observation: Observation, target: Any) -> list[int]:
    """One class per image of the batch, from the sign pattern of the last layer's gradient."""
    if observation.knowledge.batch_size is None:
        raise MissingKnowledgeError("iDLG needs the batch size (declared knowledge 'batch_size')")
    size = int(observation.knowledge.batch_size)
    g = label_signal(observation, target)
    order = torch.argsort(g).tolist()  # most negative first
    negative = [k for k in order if g[k] < 0] or order[:1]
    labels = negative[:size]
    if len(labels) < size:
        # Repeated classes: one image of class k explains about `impact` of its negative mass.
        impact = float(-g[negative].sum()) / size
        counts = {k: 1 for k in labels}
        for _ in range(size - len(labels)):
            k = max(counts, key=lambda c: float(-g[c]) - counts[c] * impact)
            counts[k] += 1
        labels = [k for k in labels for _ in range(counts[k])]
    return sorted(labels)


@ATTACKS.register("idlg")
@dataclass
class IDLG(DLG):
    name: ClassVar[str] = "idlg"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "image": MatchConfig(optimizer="lbfgs", steps=300, distance="l2",
                             snapshot_at=(0, 10, 30, 60, 100, 200, 300)),
    }

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        config = self.match_config(target.modality)
        known = observation.knowledge.labels
        labels = [int(y) for y in known] if known is not None else infer_labels(observation, target)
        problem = target.matching_problem(observation, labels=labels,
                                          label_source="known" if known is not None else LABEL_SOURCE)
        outcome = match(problem, observation.gradients, config, checkpoint=checkpoint, resume=resume,
                        progress=progress, key_extra=self.name)
        return AttackOutput(prediction=problem.decode(outcome.variables), method=self.name,
                            assumed=problem.assumed, config=config.to_dict(), outcome=outcome,
                            details={"inferred_labels": None if known is not None else labels})
