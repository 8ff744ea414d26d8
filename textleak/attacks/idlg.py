"""iDLG — Improved Deep Leakage from Gradients (Zhao, Mopuri & Bilen, arXiv 2001.02610, 2020).

Threat model: as DLG (the shared gradient, the same model, the batch size), but labels are not
known: they are read analytically from the gradient of the classifier's last linear layer, then
DLG runs on the pixels alone with those labels fixed (`assumed["labels"]` says so).

Label rule. With softmax cross-entropy the gradient of logit k is p_k - y_k, negative only for the
true class. The bias gradient is that vector itself; the weight gradient's row k is it times the
penultimate features, which sigmoid (or any non-negative) activations keep non-negative, so the
row sum has the same sign (the paper's rule). Batch size 1: the class with the most negative
entry. Batch B (a heuristic after LLG+, Wainakh et al. 2022): the bias gradient is the batch mean
of p - y, so class k holds about B * (mean p_k - g_k) images, mean p estimated by running the
model on random images; each class with a negative gradient gets one image and the rest go, one
at a time, to the class with the largest unexplained count.

Arguments: as DLG (`steps`, `restarts`, `lr`, `optimizer`, `distance`, `seed`, ...).
Shapes: pixels [B, C, H, W]; labels [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..core.matching import MatchConfig, match
from ..core.seeding import model_mode
from ..errors import MissingKnowledgeError
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .dlg import DLG

LABEL_SOURCE = "recovered analytically (iDLG, last-layer gradient)"


def label_signal(observation: Observation, target: Any) -> tuple[torch.Tensor, bool]:
    """Per-class gradient signal [K] (the bias gradient, else the weight gradient's row sums) and
    whether it is the bias gradient (then it equals the mean over the batch of p - y exactly)."""
    weight, bias = target.output_layer()
    if bias is not None and bias in observation.gradients:
        return observation.gradients[bias].detach().double().flatten(), True
    if weight in observation.gradients:
        return observation.gradients[weight].detach().double().sum(-1), False
    raise MissingKnowledgeError(f"iDLG reads labels from the last layer's gradient ({weight}), "
                                "which the gradient file does not share")


def mean_prediction(target: Any, probes: int = 64, seed: int = 0) -> torch.Tensor:
    """The model's mean softmax over random images in [0, 1]: the share of each class's gradient
    that the batch's predictions (not its labels) account for (LLG+'s estimate)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(probes, *target.input_shape, generator=gen)
    with torch.no_grad(), model_mode(target.model, train=False):
        return target.model(target.normalise(pixels)).softmax(-1).double().mean(0)


def infer_labels(observation: Observation, target: Any) -> list[int]:
    """One class per image of the batch, from the last layer's gradient (see the module doc)."""
    if observation.knowledge.batch_size is None:
        raise MissingKnowledgeError("iDLG needs the batch size (declared knowledge 'batch_size')")
    size = int(observation.knowledge.batch_size)
    g, is_bias = label_signal(observation, target)
    order = torch.argsort(g).tolist()  # most negative first
    if size == 1:
        return order[:1]
    # Bias: B * g_k = sum_b p_bk - n_k, so n_k ~ B * (mean prediction_k - g_k). Row sums have an
    # unknown feature scale: there each image of class k is taken to explain an equal share.
    if is_bias:
        expected = size * (mean_prediction(target) - g)
    else:
        expected = -g / (float(-g[g < 0].sum()) / size if (g < 0).any() else 1.0)
    negative = [k for k in order if g[k] < 0][:size]
    counts = {k: 1 for k in negative}
    for _ in range(size - len(negative)):
        k = max(range(len(g)), key=lambda c: float(expected[c]) - counts.get(c, 0))
        counts[k] = counts.get(k, 0) + 1
    return sorted(k for k, n in counts.items() for _ in range(n))


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
