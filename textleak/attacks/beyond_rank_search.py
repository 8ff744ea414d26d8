"""`beyond_rank`'s sentence search: `exact`'s search on the partial layer-1 span, certified by the sentence spans
and the peel, with the neighbour screen and the sentence-move repair far past the limit (split out of
`beyond_rank`, session 25; the measurements are in that module's and the constants' notes)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..core import budget
from ..text.layouts import Layout
from ..text.leaks import SentenceSpans
from .beyond_rank_peel import SentenceCertificate, SentencePeeler
from .beyond_rank_screen import NeighbourScreen, SentenceMove
from .exact.candidates import Candidates
from .exact.certificates import PeelCertificate
from .exact.search import Search

log = logging.getLogger(__name__)

#: tokens left, in widths, above which the neighbour screen runs and rounds after the first seed only
#: the lengths it takes (`SentenceSearch.far`). MiniLM: settling brings true sentences back from themselves within
#: 1.3x the width and not at 1.7x (CoLA batch 64 less its 16 shortest, 656 tokens: 9 of 48; whole, 771:
#: 5 of 64; recipes/measured/large_batch_s11.md)
FAR = 1.5

#: sentence-move steps a repaired miss gets (`SentenceSearch.repair_round`). MiniLM, CoLA batch 64
#: index 0, after one seed round: the miss 1 token from a true sentence and at least one of those 2
#: off came out true within distance + 1 steps (scratch; recipes/measured/large_batch_s11.md)
REPAIR_STEPS = 3


class SearchStop:
    """The search's own stop (`beyond_rank`'s `search_stop`): once it has found nothing new for `ratio` times the
    time it took to find what it has (on the budget clock, from its start), it ends, and what is left of its share
    goes to the finish (which runs on the enclosing budget: all the time left). Far past the limit its finds come
    at times growing about geometrically (CoLA batch 64 dev 0 at 450 CPU s: 6 of 8 in the first ~25 CPU s, the 7th
    at 85-94, the 8th at 178-192, recipes/measured/large_batch_s38/search_README.md), so each new one costs about
    as much as all before it. Until the first find the whole share holds; `ratio` 0: off (the report only).

    `share`: the search's budget (`budget.time_budget`, its `seconds` the share). `report()`: the share, the
    budget-clock seconds at each find and at the end, and whether the stop ended it."""

    def __init__(self, share: budget.Budget, ratio: float = 0.0):
        self.share, self.ratio, self.seconds = share, ratio, share.seconds
        self.finds: list[float] = []

    def found(self) -> None:
        """A sentence was taken: the search may run on until (1 + ratio) times now (from its start)."""
        self.finds.append(self.share.elapsed())
        if self.ratio > 0 and self.seconds is not None:  # each find moves the end on again, never past the share
            self.share.seconds = min(self.seconds, (1.0 + self.ratio) * self.finds[-1])

    def report(self) -> dict[str, Any]:
        """What the search did, read as it ends (`stopped`: the stop, not the share or the batch, ended it)."""
        cut = self.share.seconds is not None and (self.seconds is None or self.share.seconds < self.seconds)
        return {"share": None if self.seconds is None else round(self.seconds, 1), "ratio": self.ratio,
                "finds": [round(t, 1) for t in self.finds], "ended": round(self.share.elapsed(), 1),
                "stopped": bool(cut and self.share.ran_out)}


class SentenceSearch(Search):
    """`exact`'s search on the partial layer-1 span, certified by the sentence spans and the peel."""

    def __init__(self, config: Any, layout: Layout, tokenizer: Any, cands: Candidates, lengths: Sequence[int],
                 span1: Any, peeler: SentencePeeler, spans: SentenceSpans, template: bool = True):
        super().__init__(config, layout, tokenizer, cands, lengths, span1, peeler, template)
        self.spans = spans
        self.repairer = SentenceMove()
        self.screen = NeighbourScreen(longest=config.screen)
        self.screened = False  # whether the screen took a sentence this round
        self.rounds, self.progressed = 0, True
        self.rest: Any = None  # what the last peel left (`narrow`)
        self.certificates = [SentenceCertificate(spans)] + ([PeelCertificate(peeler)] if peeler.working else [])
        self.stop: SearchStop | None = None  # the search's own stop (`SearchStop`; None: the share only)

    def assembles(self) -> bool:
        return self.span1 is not None

    def take(self, seq: list[int], res: float) -> bool:
        """`Search.take`; a sentence taken tells the stop (`SearchStop`)."""
        took = super().take(seq, res)
        if took and self.stop is not None:
            self.stop.found()
        return took

    def worth_taking(self, seq: list[int], res: float) -> bool:
        """On the partial span the sentence spans decide; on a span with a rank gap, it does."""
        return not self.span1.exact or super().worth_taking(seq, res)

    def settle(self, seqs: list[list[int]], known: Sequence[list[int]] = ()) -> list[list[int]]:
        """`Search.settle`, skipped once the budget has run out: past the limit one round settles
        hundreds of seeds, and the budget is otherwise checked only between lengths. With the spans read lean
        (`certify_lean`: verdicts kept), the settled sentences `take` will certify are read together first."""
        if budget.expired():
            return [list(s) for s in seqs]
        settled = super().settle(seqs, known)
        self.screen_round(list(seqs) + settled)
        if not self.span1.exact and self.spans.lean:  # what `take` will ask, read in one padded forward
            self.spans.certifies(self.layout, [s for s in settled if len(s) in self.missing and s not in self.found])
        return settled

    def screen_round(self, seqs: list[list[int]]) -> None:
        """Far past the limit (`far`), the seeds and what settling made of them, with their nearest
        neighbours, screened on the sentence spans (`beyond_rank_screen`); what passes goes to `take`.
        Nearer, settling finds them and the screen only costs time (SST-2 batch 32 index 0, 478 tokens,
        screened up to 12 tokens: 26 of 32 certified in its 900 s against all 32 without;
        recipes/measured/large_batch_s12.md)."""
        if not self.far():
            return
        for seq in self.screen(self, [s for s in seqs if len(s) in self.missing]):
            if len(seq) in self.missing and seq not in self.found:
                self.screened |= self.take(seq, float(self.residuals([seq])[0]))

    def narrow(self, rest: Any) -> None:
        """`Search.narrow`, keeping what is left for the finish (`beyond_rank_finish`)."""
        self.rest = rest
        super().narrow(rest)

    def accept_pending(self) -> None:
        """Past the limit a sentence the peel refused is not taken on the span alone."""

    def far(self) -> bool:
        """Whether what is left is more than FAR times the width, its span partial."""
        return not self.span1.exact and sum(self.missing) > FAR * self.layout.hidden_size

    def seeded_lengths(self) -> set[int]:
        """Every missing length in the first round (each gets a guess) and after a round that found
        nothing; else, while what is left is more than FAR times the width (where settling drifts off even
        true sentences), only the lengths the screen takes (`config.screen`), where rounds find more."""
        lengths = set(self.missing)
        if self.rounds == 1 or not self.progressed or not self.far():
            return lengths
        return {n for n in lengths if n <= self.config.screen} or lengths

    def seed_round(self, widen: int) -> bool:
        """`Search.seed_round`, then, while the span is partial, the closest misses repaired."""
        self.screened = False
        self.rounds += 1
        progress = super().seed_round(widen) or self.screened
        self.progressed = self.repair_round() or progress
        return self.progressed

    def repair_round(self) -> bool:
        """While the span of what is left is partial, the `config.repair` misses closest to a sentence of the
        batch (least sentence-span score among each missing length's best by layer-1 residual) get up to
        REPAIR_STEPS sentence moves, whether or not the round found anything. Far past the limit (MiniLM, CoLA
        batch 64, 771 tokens) settling drifts off most true sentences even from the truth, and a round that
        finds one or two never reaches the moves; yet after one round a few misses stand one or two tokens
        from a true sentence, which the sentence move puts right (recipes/measured/large_batch_s11.md)."""
        if self.span1.exact or self.config.repair <= 0 or budget.expired():
            return False
        misses: list[list[int]] = []
        for n in sorted(set(self.missing)):
            for _, seq in sorted(self.near.get(n, []), key=lambda x: x[0])[:max(4, 2 * self.missing.count(n))]:
                if seq not in misses and tuple(seq) not in self.repairer.tried:
                    misses.append(seq)
        if not misses:
            return False
        order = torch.argsort(self.spans.score(self.layout, misses))[:self.config.repair].tolist()
        progress = False
        for seq in [misses[i] for i in order]:
            for _ in range(REPAIR_STEPS):
                if budget.expired() or len(seq) not in self.missing:
                    return progress
                changed, res = self.repairer(self, seq)
                if changed == seq:
                    break
                if self.take(changed, res):
                    progress = True
                    break
                seq = changed
        log.debug("repair: %d misses, found %d", len(order), len(self.found))
        return progress
