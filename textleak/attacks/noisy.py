"""`exact-noisy`: `exact` on a gradient under additive noise (`noise:VAR`, `laplace:VAR`, DP-SGD's
Gaussian): spans read above the noise's Marchenko-Pastur edge (after DAGER's noise experiments,
Petrov et al., NeurIPS 2024; the Marchenko-Pastur calibration is this module's).

Threat model as `attacks.exact.Exact`; the attacker also reads the noise level off the gradient
itself (`text.leaks.noise_level`: entries that carry no signal), never from the capture's settings.

What changes against a clean gradient: the layer spans keep the directions that clear the noise
edge sigma (sqrt(3H) + sqrt(H)) by `leaks.noise.NOISE_MARGIN` (those below it are lost, and so
are the tokens that only they carried); candidates are ranked by residual against that span,
sentences certified by the per-token residual against the plateau (`leaks.NoisySpan`); nothing
is peeled (a found sentence's own gradient comes out exactly, but the rank left cannot be read
to the token through noise). `exact` hands noisy gradients here (`attacks.update.variant_for`).

Arguments: as `Exact`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import MissingKnowledgeError
from ..text.layouts import Layout, layout_for
from ..text.leaks import LayerSpan, NoiseLevel, SpanReader, noise_level
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .exact import Exact


@ATTACKS.register("exact-noisy")
@dataclass
class NoisyExact(Exact):
    """`exact` with noise-calibrated spans."""

    name: ClassVar[str] = "exact-noisy"

    def preflight(self, observation: Observation, target: Any) -> None:
        self._layer0(observation, target)

    def run(self, observation: Observation, target: Any, **_: Any) -> AttackOutput:
        layout, span0 = self._layer0(observation, target)
        level = self._level
        out = Exact.run(self, observation, target)
        out.method = self.name
        out.details["noise"] = {"sigma": level.sigma, "source": level.source, "entries": level.entries,
                                "layer0_edge": span0.edge, "layer0_signal_directions": span0.rank}
        out.assumed["noise"] = "standard deviation read off the gradient's signal-free entries"
        return out

    def _noise(self, layout: Layout, observation: Observation) -> NoiseLevel:
        lengths = observation.knowledge.seq_lengths
        level = noise_level(layout, observation.gradients, max(lengths) if lengths else None)
        if level is None:
            raise MissingKnowledgeError("no additive noise is read off the gradient's signal-free entries")
        return level

    def _layer0(self, observation: Observation, target: Any, tokens: int | None = None) -> tuple[Layout, LayerSpan]:
        layout = layout_for(target.model)
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

    def _peeler(self, *args: Any) -> None:
        return None

    def _certified(self, span1, residuals, cands, lengths) -> bool:
        """Only the layer-1 certificate counts: under noise a position with one layer-0 candidate
        left is the noise's doing, not a proof."""
        return span1 is not None and span1.exact and super()._certified(span1, residuals, cands, lengths)
