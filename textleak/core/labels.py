"""Label counts from a classifier's last-layer gradient (iDLG, Zhao et al. 2020; LLG+, Wainakh
et al. 2022), with no knowledge of what the inputs are.

With softmax cross-entropy the gradient of logit k, averaged over a batch, is mean_b (p_bk - y_bk):
negative only for classes present in the batch. `label_counts` turns that signal and an estimate
of each class's count into integer counts that add up to the batch size.
"""

from __future__ import annotations

import torch


def label_counts(signal: torch.Tensor, expected: torch.Tensor, size: int) -> list[int]:
    """How many of `size` examples hold each class.

    signal: [K] per-class gradient signal (negative where a class is present). expected: [K] the
    estimated count of each class. Each class with a negative signal holds at least one example
    (most negative first); the others go, one at a time, to the class whose expected count
    stands furthest above what it already holds.
    """
    order = torch.argsort(signal).tolist()  # most negative first
    counts = [0] * len(order)
    negative = [k for k in order if signal[k] < 0][:size]
    for k in negative:
        counts[k] = 1
    for _ in range(size - len(negative)):
        k = max(range(len(counts)), key=lambda c: float(expected[c]) - counts[c])
        counts[k] += 1
    return counts
