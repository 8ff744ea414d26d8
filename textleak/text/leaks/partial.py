"""The partial span past the rank limit (DAGER's best-effort mode): where a layer's Q/K/V
gradient has no rank gap (B x L >= H), its top singular directions still hold most of each input,
so residuals against them still *rank* candidates; they certify none.

DAGER caps the rank at d - 20 in that mode; on MiniLM (H = 384) leaving out the weakest 10
directions ranked true sentences above one-token variants best (measured, `notes`: RT batch 16,
392 tokens: every variant scored worse, median 140x; SST-2 batch 32, 478 tokens: all, 14x;
RT batch 64, 1689 tokens: 80%, 1.05x). Registered as the span test "best-effort".

Ranking whole sentences is not settling them: re-choosing one token on its own residual in
context (`exact`'s settle) recovers more true sentences from a nearby seed with more left out
(MiniLM, RT batch 16, 392 tokens, 6 random tokens per sentence: 5 of 16 with 40 of 384 left out,
1 with 10; `recipes/beyond_rank_settle.py`), which `attacks.beyond_rank` uses. About 100 tokens
over the limit neither works (scratch measurement, 12 of SST-2 batch 32's sentences, 478 tokens,
4 random tokens each: 1-2 settled back whatever was left out (10, 30, 60, 100) or with the
directions weighted by singular value; one true sentence of 4 was not even a fixed point of
settling; whole-sentence coordinate descent ended 2-10 tokens off on 3 of 4)."""

from __future__ import annotations

from typing import Sequence

import torch

from .spans import SPAN_TESTS, LayerSpan

#: directions left out of the partial span (the weakest singular directions)
DROP = 10


class PartialSpan(LayerSpan):
    """The top directions of a layer span with no rank gap: ranks candidates, certifies nothing."""

    def certifies(self, residual: float, tokens: int) -> bool:
        return False

    @property
    def exact(self) -> bool:
        return False


def partial_span(matrices: Sequence[torch.Tensor], layer: int, drop: int = DROP) -> PartialSpan:
    """The span of the stacked `matrices`' rows less their `drop` weakest directions."""
    G = torch.cat([m.double() for m in matrices], 0)
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    s = s / s[0].clamp_min(1e-300)
    r = max(1, min(G.shape) - drop)
    gap = float(s[r - 1] / s[r].clamp_min(1e-300)) if r < len(s) else 1.0
    return PartialSpan(layer, vh[:r].T.contiguous(), s, r, gap, 0.1)


SPAN_TESTS.register("best-effort")(partial_span)
