"""`exact` on a gradient under additive noise (`noise:VAR`, `laplace:VAR`, DP-SGD's Gaussian):
spans read above the noise's Marchenko-Pastur edge (after DAGER's noise experiments, Petrov et
al. 2024; the Marchenko-Pastur calibration is this module's).

Threat model as `exact.Exact`; the attacker also reads the noise level off the gradient itself
(`noisy_span.noise_level`: entries that carry no signal), never from the capture's settings.

What changes against a clean gradient: the layer spans keep the directions that clear the noise
edge sigma (sqrt(3H) + sqrt(H)) by `update.NOISE_MARGIN` (those below it are lost, and so are the
tokens that only they carried); candidates are ranked by residual against that span, sentences
certified by the per-token residual against the plateau (`noisy_span.NoisySpan`); nothing is
peeled (a found sentence's own gradient comes out exactly, but the rank left cannot be read to
the token through noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..text import leakage as lk
from ..text import noisy_span as ns
from .base import AttackOutput
from .exact import Exact
from .update import SpanReader


@dataclass
class NoisyExact(Exact):
    """`exact` with noise-calibrated spans; `exact` hands noisy gradients here."""

    name: ClassVar[str] = "exact-noisy"

    def run(self, observation, target, **_: Any) -> AttackOutput:
        know = observation.knowledge
        longest = max(know.seq_lengths) if know.seq_lengths else None
        level = ns.noise_level(observation.gradients, longest)
        if level is None:
            return Exact.run(Exact(**self._fields()), observation, target)
        reader = SpanReader(know.seq_lengths, bool(know.special_tokens), sigma=level.sigma)
        with lk.span_reader(reader):
            span0 = reader(observation.gradients, 0)
            out = super().run(observation, target)
        out.method = self.name
        out.details["noise"] = {"sigma": level.sigma, "source": level.source, "entries": level.entries,
                                "layer0_edge": span0.edge, "layer0_signal_directions": span0.rank}
        out.assumed["noise"] = "standard deviation read off the gradient's signal-free entries"
        return out

    def _fields(self) -> dict[str, Any]:
        import dataclasses

        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _peeler(self, observation, model, lengths, rank, mask_id, known_lengths):
        return None

    @staticmethod
    def _certified(span1, residuals, cands, lengths) -> bool:
        """Only the layer-1 certificate counts: under noise a position with one layer-0 candidate
        left is the noise's doing, not a proof."""
        return span1 is not None and span1.exact and Exact._certified(span1, residuals, cands, lengths)
