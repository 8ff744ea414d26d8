"""A layer span that holds up to B fewer dimensions: the key weight gradient sees each sentence's
inputs only through their differences (a leak that moves the rank limit from B x L < H to
B x L - B < H).

Softmax is unchanged when one query's scores all shift together, so the key bias gets no
gradient (a known fact), and more: for every query i the score gradients sum to zero over the
keys it attends to, sum_j dS_ij = 0. The key gradient at token j is sum_i dS_ij q_i / sqrt(d), so
the key gradients of one sentence sum to zero, and the key weight gradient
sum_j dk_j h_j^T = sum_j dk_j (h_j - h_0)^T is spanned by the differences between each input and
its sentence's first ([CLS]) input: rank N - B, not N (N tokens, B sentences). Measured on MiniLM
classification, layer 1: RT batch 16 index 0 (392 tokens) key rank 375-376 with a drop of 200x
(query 376 with a drop of 6x, value 378 without one); CoLA batch 32 index 1 (393 tokens): key rank
361 = N - B with a drop of 1000x.

So a sentence's layer inputs all lie in one coset h_0 + R of the key span R: DAGER's test with
each row replaced by its difference to the sentence's [CLS] row (`CosetSpan`, `relative`). It
certifies whole sentences as the plain span does, up to N - B < H. Padding keys get no
attention and no gradient; padded queries feed nothing; so the zero sum holds per sentence in a
padded batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from . import leakage as lk


@dataclass
class CosetSpan(lk.LayerSpan):
    """The row space of one layer's key weight gradient: the differences h_j - h_0 between a
    sentence's inputs and its first one. Residual functions in `leakage` test those differences
    when `relative` is set."""

    relative: bool = True

    def sentence_drop(self, tokens: int) -> int:
        """How much the rank falls when a sentence of `tokens` tokens leaves the batch."""
        return tokens - 1


def key_name(gradients: Mapping[str, torch.Tensor], layer: int) -> str | None:
    rx = re.compile(rf"encoder\.layer\.{layer}\.attention\.self\.key\.weight$")
    return next((n for n in gradients if rx.search(n)), None)


def coset_span(gradients: Mapping[str, torch.Tensor], layer: int) -> CosetSpan | None:
    """The key-gradient span of `layer` when it shows a clear rank gap, else None."""
    name = key_name(gradients, layer)
    if name is None:
        return None
    G = gradients[name].double()
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    if float(s[0]) == 0.0:
        return None
    s = s / s[0]
    floor = math.sqrt(torch.finfo(gradients[name].dtype).eps)
    ratios = s[:-1] / s[1:].clamp_min(1e-300)
    ratios = torch.where(s[1:] < floor, ratios, torch.zeros_like(ratios))
    clear = (ratios >= lk.MIN_GAP).nonzero().flatten()
    if len(clear) == 0:
        return None
    r = int(clear[0]) + 1  # the first drop onto the rounding plateau
    tol = math.sqrt(float(s[r]) / float(s[r - 1]))
    return CosetSpan(layer, vh[:r].T.contiguous(), s, r, float(ratios[r - 1]), min(tol, 0.1))


def layer1_span(gradients: Mapping[str, torch.Tensor]) -> lk.LayerSpan:
    """Layer 1's span for exact recovery: the stacked Q/K/V span where it has a rank gap (fewer
    tokens than the width), else the key span's cosets where that has one (fewer tokens than
    the width plus the batch size), else the (gapless) stacked span."""
    span = lk.layer_span(gradients, 1)
    if span.exact:
        return span
    coset = coset_span(gradients, 1)
    return coset if coset is not None and coset.exact else span


def sentence_drop(span: lk.LayerSpan, tokens: int) -> int:
    """Rank lost when a sentence of `tokens` tokens is subtracted (plain spans: one per token)."""
    return span.sentence_drop(tokens) if isinstance(span, CosetSpan) else tokens
