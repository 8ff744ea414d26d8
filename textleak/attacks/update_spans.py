"""The span search's hooks on a FedAvg update (`update.UpdateExact`, mixed in as `UpdateSpans`).

`attacks.exact.Exact`'s search asks its attack for the spans it reads (`_reader`, `_layer0`, `_layer1`), the search
itself (`_search`), the positions' pins (`_pins`) and the peeler (`_peeler`). On an update they are read at the
trajectory's midpoint against the rounding's plateau (`update_rounding`), searched layered where the rounding is
fitted but not wide (`update_layers`), and peeled by replay (`update_peel`); the module doc of `update` says why.
Moved here from `update` in session 44 (no behaviour change) to give that module room.
"""

from __future__ import annotations

from typing import Any

from ..errors import MissingKnowledgeError
from ..text.layouts import Layout, layout_for
from ..text.leaks import LayerSpan, SpanReader
from ..text.leaks.positions import TokenPositions
from ..threat import Observation
from .exact.search import Search
from .update_batch_positions import pins_for
from .update_layers import LayeredSearch, LayerScore
from .update_peel import END_SLACK, RISE, UpdatePeeler
from .update_rest_rows import RestRows, row_names
from .update_rounding import RoundingFits
from .update_sim import UpdateFacts
from .update_tolerance import LAYERED_TOKENS, REPAIR_ROUNDING, layer0_tolerance


class UpdateSpans:
    """The hooks of `Exact`'s span search that `update.UpdateExact` overrides (it mixes this in before `Exact`). They
    read its options (`layered`, `eager_offers`, `rest_spans`, `rest_rows`, `plateau_gate`) and its run's state
    (`_start`: the layout at w0 and the update's facts; `_fits`; `_widen`; `_pinned`) and set `_tolerance`,
    `_observation`, `_layered_search`, `_pinned`; `_repairs_decide` is the attack's."""

    def _reader(self, observation: Observation) -> SpanReader:
        know = observation.knowledge
        return SpanReader(know.seq_lengths, bool(know.special_tokens))

    def _layer0(self, observation: Observation, target: Any, tokens: int | None = None) -> tuple[Layout, LayerSpan]:
        layout = layout_for(target.model)
        span0 = self._reader(observation)(layout, observation.gradients, 0)
        if not span0.exact:
            raise MissingKnowledgeError(
                f"the update's first-layer spectrum shows no signal above its plateau (gap {span0.gap:.3g}; "
                "learning rate too small for float32, or too many tokens)")
        if getattr(self, "_widen", None):
            span0.tol = self._tolerance = self._layer0_bound(span0)
        if self._fits_for(observation.gradients) is not None:
            span0 = self._fits.span(0, span0, self._reader(observation).bound(0))
        self._observation = observation
        return layout, span0

    def _layer1(self, layout: Layout, grads: Any, span0: LayerSpan, settings: Any = None,
                tokens: int | None = None) -> LayerSpan | None:
        if not layout.shared(grads, layout.qkv_names(1)):
            return None
        reader = self._reader(self._observation)
        span1 = reader(layout, grads, 1)
        if span1.rank < span0.rank:
            return None
        fits = self._fits_for(grads)
        return fits.span(1, span1, reader.bound(1)) if fits is not None else span1

    def _layered(self, observation: Observation) -> bool:
        """Whether the search scores layers 1+2 (`update_layers`): classification, where layer 1's rounding
        was fitted but is not wide (lr ~1e-3 on MiniLM: `update_rounding`, `REPAIR_ROUNDING`) and the
        batch declares more than `LAYERED_TOKENS` tokens."""
        fits = self._fits_for(observation.gradients)
        lengths = observation.knowledge.seq_lengths
        return self.layered and fits is not None and 1 in fits.fits and fits.share(0) < REPAIR_ROUNDING \
            and observation.task == "classify" and lengths is not None and sum(lengths) > LAYERED_TOKENS

    def _search(self, layout: Layout, tok: Any, cands: Any, lengths: list[int], span1: LayerSpan | None,
                peeler: Any, template: bool) -> Search:
        """A `LayeredSearch` (`update_layers`: the layer-1 bar loosened, each sentence passing it polished
        on layers 1+2) where `_layered`; else the plain search."""
        if span1 is None or not self._layered(self._observation):
            return Search(self, layout, tok, cands, lengths, span1, peeler, template)
        self._layered_search = LayeredSearch(self, layout, tok, cands, lengths, span1, peeler, template,
                                             score=LayerScore(layout, self._fits, sum(lengths)),
                                             eager=self.eager_offers)
        return self._layered_search

    def _pins(self, observation: Observation, lengths: Any) -> TokenPositions | None:
        pins = self._batch_pins(observation, *self._start)
        return None if getattr(pins, "soft", False) else pins  # a ranking alone narrows nothing for the search

    def _batch_pins(self, observation: Observation, layout: Layout, facts: UpdateFacts) -> TokenPositions | None:
        """`update_batch_positions.pins_for`, read once per run (layout: the model at w0), where the rounding is
        wide (`_repairs_decide`: the span search certifies alone elsewhere)."""
        if getattr(self, "_pinned", None) is None:
            self._pinned = pins_for(self, observation, layout, facts, lambda: self._repairs_decide(observation))
        return self._pinned[0]

    def _fits_for(self, gradients: Any) -> RoundingFits | None:
        """This run's rounding fits (`update_rounding`), when they were made for these gradients."""
        fits = getattr(self, "_fits", None)
        return fits if fits is not None and fits.update is gradients else None

    def _peeler(self, observation: Observation, layout: Layout, lengths: list[int], span1: LayerSpan | None,
                *_: Any) -> UpdatePeeler | None:
        """A sentence's share of an update is its average gradient along the client's trajectory,
        not its gradient at any one point, so no subtraction is exact (at the midpoint its layer-1
        part is still off by ~2% on MiniLM, K = 4, lr 1e-2: ten times the rounding) and no rank
        test certifies a peel. `UpdatePeeler` replays found sentences' shares along the linear
        trajectory and hands the search the span of what is left (a narrowing, not a
        certificate: the simulation of the whole batch certifies). Where the rounding was fitted
        (small learning rates) each token of a peeled sentence must also lie near the whole
        layer-1 span (`update_peel.TOKEN_SLACK`), or, in a `LayeredSearch`, its last token
        (`update_peel.END_SLACK`), and no peel may raise what is left over its rounding plateau more than
        `update_peel.RISE` x (`plateau_gate`). Classification only."""
        if span1 is None or observation.task != "classify":
            return None
        start, facts = self._start
        fits = self._fits_for(observation.gradients)
        check = (layout, span1) if fits is not None and 1 in fits.fits else None
        layered = check is not None and self._layered(observation)
        rows = RestRows(start, observation.gradients, facts.lr, facts.steps) if layered and self.rest_spans and \
            self.rest_rows and row_names(start, observation.gradients) else None
        return UpdatePeeler(start, observation.gradients, lengths, facts, check, END_SLACK if layered else None,
                            RISE if layered and self.plateau_gate else None,
                            self._layer0_bound if layered and self.rest_spans else None, fits, rows)

    def _layer0_bound(self, span: LayerSpan) -> float:
        """The layer-0 candidates' residual bound on a span, the whole update's or what a peel leaves:
        `layer0_tolerance` x this attempt's widening, on a retry at least the spectral tolerance."""
        widen = getattr(self, "_widen", None) or 1.0
        tight = widen * layer0_tolerance(span)
        return tight if widen == 1 else max(span.tol, tight)
