"""`exact-noisy`: `exact` on a gradient under additive noise (`noise:VAR`, `laplace:VAR`, DP-SGD's
Gaussian): spans read above the noise's Marchenko-Pastur edge (after DAGER's noise experiments,
Petrov et al., NeurIPS 2024; the Marchenko-Pastur calibration is this module's).

Threat model as `attacks.exact.Exact`; the attacker also reads the noise level off the gradient
itself (`text.leaks.noise_level`: entries that carry no signal), never from the capture's settings.

What changes against a clean gradient:
- the layer spans keep as many directions as the declared lengths have tokens, the weakest ones
  near the noise edge sigma (sqrt(3H) + sqrt(H)) too (`leaks.SpanReader`); the attack needs some
  to clear that edge by `leaks.noise.NOISE_MARGIN`;
- the vocabulary is the noisy word-embedding rows that stand out (`leaks.noisy_token_set`, an
  untied head), screened at layer 0 with a wide tolerance (`SCREEN_TOL`): the span's weakest
  directions are tilted by the noise, so true tokens sit well off it (CoLA dev batch 4, noise
  1e-10: squared residuals up to 0.063, where a whole-vocabulary screen keeps 1-2 tokens per
  position, 0.01);
- nothing is peeled (a found sentence's own gradient comes out exactly, but the rank left cannot
  be read to the token through noise), so sentences are found one by one: those the layer-1
  per-token residual admits against the plateau, and when a round admits none, the closest miss
  (`Search.settle_for_best`); the search then scores against what the found leave
  (`leaks.found.FoundSpan`). Before this, copies of the strongest sentence filled the batch:
  CoLA dev batch 4 at noise 1e-10 read ROUGE-1 0.35 here;
- the result is certified only when every sentence passes that residual test on the directions
  that clear the edge (`NoisySpan.strict`).
`exact` hands noisy gradients here (`attacks.variants.variant_for`).

Arguments: as `Exact`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..errors import MissingKnowledgeError
from ..text.layouts import Layout, layout_for
from ..text.leaks import LayerSpan, NoiseLevel, SpanReader, noise_level, noisy_token_set, sequence_residuals
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .exact import Exact

#: the layer-0 tolerance (relative residual) when the candidates are the noisy rows' tokens
SCREEN_TOL = 0.3


@ATTACKS.register("exact-noisy")
@dataclass
class NoisyExact(Exact):
    """`exact` with noise-calibrated spans."""

    name: ClassVar[str] = "exact-noisy"
    #: no certificate admits a sentence through noise: the search takes its closest misses one by one
    settles: ClassVar[bool] = True

    def preflight(self, observation: Observation, target: Any) -> None:
        self._layer0(observation, target)

    def run(self, observation: Observation, target: Any, **_: Any) -> AttackOutput:
        layout, span0 = self._layer0(observation, target)
        level = self._level
        out = Exact.run(self, observation, target)
        out.method = self.name
        out.details["noise"] = {"sigma": level.sigma, "source": level.source, "entries": level.entries,
                                "layer0_edge": span0.edge, "layer0_signal_directions": span0.signal}
        out.assumed["noise"] = "standard deviation read off the gradient's signal-free entries"
        return out

    def _noise(self, layout: Layout, observation: Observation) -> NoiseLevel:
        lengths = observation.knowledge.seq_lengths
        level = noise_level(layout, observation.gradients, max(lengths) if lengths else None)
        if level is None:
            raise MissingKnowledgeError("no additive noise is read off the gradient's signal-free entries")
        return level

    def _layer0(self, observation: Observation, target: Any, tokens: int | None = None) -> tuple[Layout, LayerSpan]:
        layout = self._layout = layout_for(target.model)
        self._level = self._noise(layout, observation)
        know = observation.knowledge
        self._read = SpanReader(know.seq_lengths, bool(know.special_tokens), sigma=self._level.sigma)
        span0 = self._read(layout, observation.gradients, 0)
        if not span0.exact:
            raise MissingKnowledgeError(
                f"the first layer's gradient shows no rank gap above the noise (standard deviation "
                f"{self._level.sigma:.3g}): no direction clears the noise plateau")
        return layout, span0

    def _layer1(self, layout: Layout, grads: Any, span0: LayerSpan, settings: Any = None,
                tokens: int | None = None) -> LayerSpan | None:
        if not layout.shared(grads, layout.qkv_names(1)):
            return None
        span1 = self._read(layout, grads, 1)
        return None if span1.rank < span0.rank else span1

    def _vocabulary(self, layout: Layout, grads: Any, tok: Any, task: str, span0: LayerSpan
                    ) -> tuple[torch.Tensor, str, LayerSpan]:
        rows = noisy_token_set(layout, grads) if task == "classify" else None
        if rows is None:
            return super()._vocabulary(layout, grads, tok, task, span0)
        specials = torch.tensor([t for t in (tok.cls_token_id, tok.sep_token_id) if t is not None], dtype=torch.long)
        vocab = torch.unique(torch.cat([rows.cpu(), specials]))
        return vocab, "word-embedding rows standing out of the noise", replace(span0, tol=max(span0.tol, SCREEN_TOL))

    def _peeler(self, *args: Any) -> None:
        return None

    def _certified(self, span1, residuals, cands, lengths, sequences) -> bool:
        """Only the layer-1 certificate counts, on the directions that clear the noise: under noise
        a position with one layer-0 candidate left is the noise's doing, not a proof."""
        if span1 is None or not span1.exact:
            return False
        strict = span1.strict()
        residuals = sequence_residuals(self._layout, strict, sequences).tolist() if sequences else residuals
        return super()._certified(strict, residuals, cands, lengths, sequences)
