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

A preset of the optimisation template (attacks/optimisation.py) whose preparation is
`LAST_LAYER_LABELS`; Inverting Gradients shares it. The counting rule itself is modality-free
(`core.labels.label_counts`).

Arguments: the template's (`steps`, `restarts`, `lr`, `optimizer`, `distance`, `seed`, ...).
Shapes: pixels [B, C, H, W]; labels [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.labels import label_counts
from ..core.matching import MatchConfig
from ..core.seeding import model_mode
from ..errors import MissingKnowledgeError
from ..threat import Observation
from .base import ATTACKS
from .optimisation import GradientMatching, Prepared, Preparation

LABEL_SOURCE = "recovered analytically (iDLG, last-layer gradient)"


def _signal_name(observation: Observation, target: Any) -> tuple[str, bool]:
    """The last layer's parameter whose gradient gives the label signal, and whether it is the bias."""
    weight, bias = target.output_layer()
    if bias is not None and bias in observation.gradients:
        return bias, True
    if weight in observation.gradients:
        return weight, False
    raise MissingKnowledgeError(f"iDLG reads labels from the last layer's gradient ({weight}), "
                                "which the gradient file does not share")


def label_signal(observation: Observation, target: Any) -> tuple[torch.Tensor, bool]:
    """Per-class gradient signal [K] (the bias gradient, else the weight gradient's row sums) and
    whether it is the bias gradient (then it equals the mean over the batch of p - y exactly)."""
    name, is_bias = _signal_name(observation, target)
    g = observation.gradients[name].detach().double()
    return (g.flatten(), True) if is_bias else (g.sum(-1), False)


def mean_prediction(target: Any, probes: int = 64, seed: int = 0) -> torch.Tensor:
    """The model's mean softmax over random images in [0, 1]: the share of each class's gradient
    that the batch's predictions (not its labels) account for (LLG+'s estimate)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(target.model.parameters()).device
    pixels = torch.rand(probes, *target.input_shape, generator=gen).to(device)
    with torch.no_grad(), model_mode(target.model, train=False):
        return target.model(target.normalise(pixels)).softmax(-1).double().mean(0)


def infer_labels(observation: Observation, target: Any) -> list[int]:
    """One class per image of the batch, from the last layer's gradient (see the module doc)."""
    if observation.knowledge.batch_size is None:
        raise MissingKnowledgeError("iDLG needs the batch size (declared knowledge 'batch_size')")
    size = int(observation.knowledge.batch_size)
    g, is_bias = label_signal(observation, target)
    if size == 1:
        return torch.argsort(g).tolist()[:1]
    # Bias: B * g_k = sum_b p_bk - n_k, so n_k ~ B * (mean prediction_k - g_k). Row sums have an
    # unknown feature scale: there each image of class k is taken to explain an equal share.
    if is_bias:
        expected = size * (mean_prediction(target).to(g.device) - g)
    else:
        expected = -g / (float(-g[g < 0].sum()) / size if (g < 0).any() else 1.0)
    counts = label_counts(g, expected, size)
    return [k for k, n in enumerate(counts) for _ in range(n)]


class LastLayerLabels(Preparation):
    """Labels declared known, else read off the last layer's gradient (`infer_labels`)."""

    def check(self, attack, observation: Observation, target: Any) -> None:
        super().check(attack, observation, target)
        if observation.knowledge.labels is None:
            _signal_name(observation, target)

    def __call__(self, attack, observation: Observation, target: Any) -> Prepared:
        known = observation.knowledge.labels
        if known is not None:
            return Prepared(observation, {"labels": [int(y) for y in known], "label_source": "known"},
                            details={"inferred_labels": None})
        labels = infer_labels(observation, target)
        return Prepared(observation, {"labels": labels, "label_source": LABEL_SOURCE},
                        details={"inferred_labels": labels})


LAST_LAYER_LABELS = LastLayerLabels()


@ATTACKS.register("idlg")
@dataclass
class IDLG(GradientMatching):
    name: ClassVar[str] = "idlg"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "image": MatchConfig(optimizer="lbfgs", steps=300, distance="l2",
                             snapshot_at=(0, 10, 30, 60, 100, 200, 300)),
    }
    PREPARE: ClassVar[dict[str, Preparation]] = {"image": LAST_LAYER_LABELS}
