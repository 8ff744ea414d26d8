"""Labels read off the heads' gradients.

Classification: the classifier's output bias gradient is mean_i (p_i - y_i), so for one example
its only negative entry is the label (iDLG, Zhao et al. 2020); for B examples the label counts are
round(sum_i p_i - B * grad), estimated before the inputs are known with p_i = 1/C, and exact
afterwards from the output weight gradient (`assign_class_labels`).
Masked-LM: the output bias gradient is the mean over masked positions of (p - y); its negative
entries are the masked tokens, -M * grad their counts (`mlm_label_counts`).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ...errors import MissingKnowledgeError
from ..layouts import Layout


def _output_bias(layout: Layout, gradients: Mapping[str, torch.Tensor], what: str) -> torch.Tensor:
    head = layout.classifier()
    if head.bias is None:
        raise MissingKnowledgeError(f"{what} needs a bias on the classifier's output layer ({head.weight}), "
                                    "which this model has not")
    layout.require(gradients, [head.bias], what)
    return gradients[head.bias].double()


def class_label_counts(layout: Layout, gradients: Mapping[str, torch.Tensor], batch_size: int) -> list[int]:
    """How many examples of each class, from the classifier's output bias gradient (iDLG when B=1)."""
    g = _output_bias(layout, gradients, "label recovery")
    C = g.numel()
    if batch_size == 1:
        counts = [0] * C
        counts[int(g.argmin())] = 1
        return counts
    est = torch.clamp(torch.round(batch_size / C - batch_size * g), min=0).long().tolist()
    # the counts must add up to B: fix rounding on the classes with the most negative gradient
    order = torch.argsort(g).tolist()
    while sum(est) > batch_size:
        c = next(c for c in reversed(order) if est[c] > 0)
        est[c] -= 1
    i = 0
    while sum(est) < batch_size:
        est[order[i % C]] += 1
        i += 1
    return est


def assign_class_labels(layout: Layout, gradients: Mapping[str, torch.Tensor], features: torch.Tensor,
                        probs: torch.Tensor, divisor: float | str | None = "batch") -> list[int]:
    """Each example's class once the features entering the classifier's output layer [B, F] and
    the probabilities [B, C] are known (`Layout.classifier_inputs`).

    The output weight gradient is G = (P - Y)^T features / k, so Y^T = (P^T features - k G)
    features^+. `divisor` k: B for a plain mean loss ("batch", the default), 1 / (a fitted share of
    one example), or None when the gradient carries an unknown positive factor (clipping,
    accumulation): then the sign rule, G features^+ = (P - Y)^T / k whose only negative entry
    in each column is the example's class (p_y - 1 < 0 <= p_c), whatever k > 0 is (iDLG's rule,
    per example).
    """
    name = layout.classifier().weight
    layout.require(gradients, [name], "per-example label recovery")
    G = gradients[name].to(features.device).double()
    features, probs = features.double(), probs.double()
    if divisor is None or (divisor != "batch" and not divisor > 0):
        return (G @ torch.linalg.pinv(features)).argmin(0).tolist()
    k = features.shape[0] if divisor == "batch" else divisor
    yt = (probs.T @ features - k * G) @ torch.linalg.pinv(features)
    return yt.argmax(0).tolist()


def mlm_label_counts(layout: Layout, gradients: Mapping[str, torch.Tensor], n_masked: int | None) -> dict[int, int]:
    """Masked tokens and their counts from the masked-LM output-bias gradient (negative entries)."""
    name = layout.mlm_head().bias
    layout.require(gradients, [name], "masked-token recovery")
    g = gradients[name].double()
    neg = (g < 0).nonzero().flatten()
    if n_masked is None:
        return {int(t): 1 for t in neg.tolist()}
    return {int(t): max(1, int(round(-n_masked * float(g[t])))) for t in neg.tolist()}
