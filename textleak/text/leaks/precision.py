"""Layer spans of a gradient computed in reduced precision (bfloat16 / float16 autocast).

Under autocast the weight gradient G = sum_i delta_i x_i^T is a bf16 (fp16) matrix product: the
inputs x_i enter rounded to the low precision and every entry of G is rounded once more. The
rounded inputs span G's rows exactly, so a candidate input, rounded the same way, is still a
member; but the output rounding adds noise of relative size u (bfloat16: u = 2^-8) to every entry,
so there is no gap of ten between the signal and rounding (MiniLM, batch 4: 6e-4 -> 2.4e-4 at the
token count) and the weakest directions of the span are tilted by that noise. What still holds:

- the rank: layer 1's inputs are all distinct (attention mixes each token's context in), so its
  rank is the number of tokens, read from the declared lengths; layer 0's is at most that;
- membership: a true layer-1 input's relative residual is ~u/4 (measured: summed over a
  44-token sentence, 1.6e-4), a sentence with one token swapped for another sentence's token
  shows 3e-2 to 7e-2. The certificate is therefore sum of squared residuals <= n (2u)^2
  (a margin of 17x above the true sentence of 44 tokens and 10x below the closest swap);
- layer 0 separates poorly (measured, bfloat16: true inputs up to 1.65e-2 = 4.2u at SST-2 batch 4,
  chance non-members from 3e-3; at batch 8 every leaked token passes everywhere): its candidates
  are kept wide (threshold 8u; 4u missed two true tokens of a 26-token sentence), layer 1 decides,
  and the token placements read off the embedding gradients, which the autocast leaves in
  float32 (LayerNorm's orthogonality holds whatever the rounding of the gradient reaching it),
  are added where layer 0 misses them (`attacks.exact.candidates`).

Nothing peels off in reduced precision (a recomputed sentence gradient does not subtract off a
rounded one exactly). Where float32 narrows the search to what is left of the batch, here the
found sentences stay in the span, and their inputs in slightly other contexts (a found sentence
shifted, cut or extended) keep scoring low: settling falls into such copies (measured, fp16 CoLA
dev batch 8, index 1: seven sentences found in the first rounds, then the 19-token one never, the
seeds settling into a found 16-token sentence with a tail, layer-1 residual 0.069 against 3e-6 for
the truth). So once a sentence is found the search scores candidates against what the found
sentences leave (`RoundedSpan.without`): the residual's numerator is unchanged (the found inputs
lie in the span) but it is divided by the part of the input outside the found inputs' span, not
by the whole input. In that batch a true body input of the missing sentence kept 0.21 to 0.82 of
its length there and scored at most 1.8e-3; the copy's inputs kept 0.02 to 0.13 and scored ~0.95
each. That part is floored at 1/16 of the input (`found.LEFT_FLOOR`: [CLS], alike in every sentence,
keeps 0.002), so no input's rounding noise is amplified more than 16 times. Only the search's
ranking changes: whole-sentence residuals, and so every certificate, are measured against the
whole span as before.

That alone did not reach RT dev batch 8 (215 tokens: 3 of 8 sentences in 420 s, settling on near
misses 5 tokens off), where float32 is helped by each peel shrinking the token set. So a classifier's
found sentence is also peeled approximately (`attacks.exact.peeling_rounded.RoundedPeeler`): its float32
gradient at a fitted share comes off what is left, whose layer-1 span is read here at the tokens
left and whose word-embedding rows say which tokens remain; only the search uses it, certificates
still read the whole span, and the peels wait for a round that finds nothing (fp16 RT batch 8,
index 0: 8 of 8 certified in 98 s wall, 95 CPU s).
Layer 0 is not read again from what is left: weakened by the subtraction against the same rounding,
it lost true tokens shared with found sentences.

`RoundedSpan` is a `LayerSpan` whose residuals round the candidate inputs as the victim's
autocast did and whose certificate follows u; `span_for(layout, gradients, layer, settings,
tokens)` returns the plain `layer_span` for float32 computation and a `RoundedSpan` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ...training import ROUND_TO, TrainingSettings
from ..layouts import Layout
from .found import FoundSpan
from .spans import LayerSpan, layer_span


@dataclass
class RoundedSpan(FoundSpan):
    """A layer span read at a reduced precision's unit roundoff `roundoff`; candidate inputs are
    rounded to `round_to` (the victim's autocast dtype) before they are measured."""

    roundoff: float = 2.0 ** -24
    round_to: torch.dtype | None = None

    @property
    def floor(self) -> float:
        return 2 * self.roundoff

    @property
    def exact(self) -> bool:
        return self.rank < self.basis.shape[0]

    def certifies(self, residual: float, tokens: int) -> bool:
        return residual <= self.floor ** 2 * tokens

    def residual(self, h: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
        h = self.measured(h)
        return super().residual(h.double() if precise else h.float(), precise=precise)

    def measured(self, h: torch.Tensor) -> torch.Tensor:
        return h.to(self.round_to) if self.round_to is not None else h


def span_for(layout: Layout, gradients: Mapping[str, torch.Tensor], layer: int, settings: TrainingSettings,
             tokens: int | None, test: str = "rank-gap") -> LayerSpan:
    """The layer's span as the capture's precision allows: `layer_span` (by `test`) in float32;
    in bfloat16 / float16 the rank is `tokens` (layer 1: every token a direction; layer 0: an
    upper bound, as tokens at the same position in several sentences share one input)."""
    if settings.precision not in ROUND_TO or tokens is None:
        return layer_span(layout, gradients, layer, test)
    G = layout.qkv_gradient(gradients, layer, "exact recovery")
    _, s, vh = torch.linalg.svd(G, full_matrices=False)
    H = G.shape[1]
    r = max(1, min(int(tokens) * layout.qkv_sharing(layer), H))
    s = s / s[0].clamp_min(1e-300)
    gap = float(s[r - 1] / s[r]) if r < H else 1.0
    u = settings.roundoff
    return RoundedSpan(layer, vh[:r].T.contiguous(), s, r, gap, (8 if layer == 0 else 4) * u, roundoff=u,
                       round_to=ROUND_TO[settings.precision])
