"""The search: one object holding what an assembly knows as it goes (see the package doc)."""

from __future__ import annotations

import logging
import random
from typing import Any, Sequence

import torch

from ...core import budget
from ...core.device import screen_count
from ...text.decode import continuation_pieces
from ...text.layouts import Layout
from ...text.leaks import LayerSpan, sequence_residuals
from .candidates import Candidates
from .certificates import PeelCertificate, SpanCertificate
from .moves import MOVES
from .seeds import beam, draw, settle
from .sequences import cuts, follows

log = logging.getLogger("textleak.attacks.exact")

#: misses per length kept from before the last peel (`Search.earlier`)
EARLIER = 16
#: `search_screen="auto"` where bfloat16 is fast: settling scores each position's candidates under bfloat16 and
#: rescores each seed's this many least at float32 (`leaks.slots.screened`)
SEARCH_SCREEN = 4


class Search:
    """Sentences from per-position candidates, peeled off the batch one at a time.

    Each round seeds whole sentences of every missing length (the completions of one beam
    search over prefixes and random draws from the candidates), settles each (every token
    re-chosen in the context of the rest of its sentence until none changes) and accepts those
    that all certificates admit. An accepted sentence leaves the problem at once: where the
    peel certificate holds (its own gradient subtracted from the shared one), what is left gives
    the spans, token set and placements of the rest of the batch; in any case it is barred from
    later beams. Settled misses are also cut to the shorter lengths still missing. A round that
    finds nothing runs the moves on its closest misses, then widens the next round: twice the
    beam and the random seeds. Candidates are narrowed to the tokens the placements allow per
    position; should the widest round fail within them, the search goes on over every layer-0
    candidate. The time budget is checked at the end of each round, before each length's seeds and
    before each move.

    State: span1 (the layer-1 span of what is left), cands, found (certified sentences, in the
    order found), missing (lengths still to find), near (length -> best uncertified guesses),
    pending (certified, but refused by a peel before any sentence came out)."""

    def __init__(self, config: Any, layout: Layout, tokenizer: Any, cands: Candidates, lengths: Sequence[int],
                 span1: LayerSpan | None, peeler: Any = None, template: bool = True):
        self.config, self.layout, self.cands = config, layout, cands
        self.lengths = list(lengths)
        self.cls_id, self.sep_id, self.mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        self.ends = bool(template) and self.cls_id is not None and self.sep_id is not None
        self.span1 = self.full_span = span1
        self.certify_span: LayerSpan | None = None  # after an approximate peel: the whole span certifies
        self.peeler = peeler
        self.rng = random.Random(config.seed)
        self.found: list[list[int]] = []
        self.missing = list(lengths)
        self.later = 0  # sentences of the batch that later searches look for (left padding)
        self.near: dict[int, list[tuple[float, list[int]]]] = {}
        # the best misses before the last peel, best first (their residuals were read against the old span):
        # guesses of last resort, so that a search that runs out just after a peel does not report filler
        self.earlier: dict[int, list[list[int]]] = {}
        self.pending: list[tuple[float, list[int]]] = []
        self.certificates = [SpanCertificate()] + ([PeelCertificate(peeler)] if peeler is not None and peeler.working
                                                   else [])
        self.moves = [MOVES.get(name)() for name in config.moves]
        # word pieces that continue a word: a word split in pieces is where settling usually stalls
        self.pieces = continuation_pieces(tokenizer, cands.tokens())
        # >0: settling screens each position's candidates at bfloat16 and rescores this many per seed (`settle`)
        self.slot_screen = screen_count(getattr(config, "search_screen", 0), SEARCH_SCREEN, layout.device)

    # -- what moves and seeds use --------------------------------------------------------------
    def free(self, p: int, n: int | None = None) -> list[int]:
        return self.cands.free(p, n)

    def residuals(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Whole-sentence layer-1 residuals against the span of what is left."""
        return sequence_residuals(self.layout, self.span1, seqs)

    def settle(self, seqs: list[list[int]], known: Sequence[list[int]] = ()) -> list[list[int]]:
        return settle(self, seqs, known)

    # -- what a search past the rank limit changes (#16: `attacks.beyond_rank`) ----------------
    def assembles(self) -> bool:
        """Whether sentences can be assembled at all: a layer-1 span with a rank gap."""
        return self.span1 is not None and self.span1.exact

    def seeded_lengths(self) -> set[int]:
        """The missing lengths a round seeds: every one."""
        return set(self.missing)

    def worth_taking(self, seq: list[int], res: float) -> bool:
        """Whether a cut of a settled seed goes to the certificates (its layer-1 residual passes)."""
        return self.span1.certifies(res, len(seq))

    # -- the algorithm -------------------------------------------------------------------------
    def run(self) -> tuple[list[list[int]], list[float]]:
        """(one sentence per length of `lengths`, in that order; their whole-sentence residuals)."""
        if not self.assembles():  # no second layer: each position's best candidates
            rows = [[self._at(p, n, lambda p: self.free(p)[b % len(self.free(p))]) for p in range(n)]
                    for b, n in enumerate(self.lengths)]
            return rows, [float("nan")] * len(self.lengths)
        widen = 1
        while self.missing:
            if widen > self.config.widen:
                if self.cands.pins is None:
                    if not self.settle_for_best():
                        break
                    widen = 1
                    continue
                # a token placed wrongly (a chance orthogonality) bars its sentence: drop the placements
                log.debug("nothing found within the placed positions: every layer-0 candidate from here on")
                self.cands.pins, widen = None, 1
            progress = self.seed_round(widen)
            progress = self.move_round(widen, progress)
            # the seeds missed what is left: search wider; once something is found (and peeled off,
            # which shrinks the candidates) narrow seeding is worth trying again
            log.debug("round: widen %d, found %d, missing %s, closest misses %s", widen, len(self.found),
                      self.missing, {n: [round(r / n, 5) for r, _ in sorted(v)[:3]]
                                     for n, v in self.near.items() if n in self.missing})
            widen = widen * 2 if not progress else 1
            if not progress:
                self.stalled()
            if budget.expired():
                break
        self.accept_pending()
        return self.result()

    def seed_round(self, widen: int) -> bool:
        """Seed, settle and test sentences of every missing length; whether any was accepted."""
        progress, restarts = False, self.config.restarts
        wanted = {n: self.missing.count(n) for n in self.seeded_lengths()}
        finished = beam(self, wanted, widen)
        for n in sorted(wanted):
            if budget.expired():  # (#16) past the rank limit one round can outlast the budget many times
                break
            seeds = [seq for _, seq in sorted(finished[n], key=lambda x: x[0])][:2 * wanted[n] * widen]
            seeds += [draw(self, n) for _ in range(restarts * widen)]
            tried: list[list[int]] = []
            for i in range(0, len(seeds), restarts):  # a batch at a time: stop once found
                if n not in self.missing:
                    break
                settled = self.settle(seeds[i:i + restarts], known=[g for _, g in self.near.get(n, [])])
                settled = [seq for j, seq in enumerate(settled) if seq not in settled[:j] and seq not in tried]
                tried += settled
                for seq, res in zip(settled, self.residuals(settled).tolist() if settled else []):
                    progress |= self.take(seq, float(res))
                # a seed may settle into a shorter sentence of the batch, with a stray token or
                # two past its end (every token fits its true neighbours): cut it to size
                short = [c for seq in settled if seq not in self.found for c in cuts(seq, self.missing, self.ends,
                                                                                     self.sep_id)]
                for seq, res in zip(short, self.residuals(short).tolist() if short else []):
                    if self.worth_taking(seq, float(res)):
                        progress |= self.take(seq, float(res))
        return progress

    def move_round(self, widen: int, progress: bool) -> bool:
        """Settling stalled: larger moves on the closest misses (residual per token, any length)."""
        for move in self.moves:
            if progress or (move.widest_only and widen < self.config.widen):
                break
            for seq in self.closest_misses():
                if budget.expired():  # a move on a long sentence can take a minute in reduced precision
                    return progress
                if len(seq) in self.missing:
                    progress |= self.take(*move(self, seq))
            log.debug("after %s: found %d", move.name, len(self.found))
        return progress

    def closest_misses(self) -> list[list[int]]:
        """Each missing length's closest misses (as many as the length is missing), best residual per token first."""
        misses = sorted(((r / n, seq) for n in set(self.missing)
                         for r, seq in sorted(self.near.get(n, []), key=lambda x: x[0])[:self.missing.count(n)]),
                        key=lambda x: x[0])
        return [seq for _, seq in misses]

    def take(self, seq: list[int], res: float) -> bool:
        """Accept `seq` as one of the batch's when every certificate admits it; else keep it
        among the closest misses."""
        n = len(seq)
        if seq in self.found or n not in self.missing or \
                not all(c.admits(self, seq, res) for c in self.certificates):
            self.near.setdefault(n, []).append((res, seq))
            return False
        self.found.append(seq)
        self.missing.remove(n)
        if self.peeler is None or not self.peeler.working:  # nothing peels off exactly
            rest = self.peeler.peel(seq) if self.certify_span is not None and self.missing else None
            if rest is not None:  # narrowing already: go on
                self.narrow(rest)
            else:  # score what the found leave; peel and narrow once a round stalls (`stalled`)
                self.span1 = self.span1.without(self.layout, seq)
        return True

    def settle_for_best(self) -> bool:
        """Where no certificate can admit a sentence (a noisy gradient, `config.settles`), the widest
        round's closest miss (residual per token) that is no cut or extension of a found sentence is
        taken as found, uncertified, so that the rest of the batch is searched against what it
        leaves (`span1.without`) instead of settling into copies of it; whether one was taken."""
        if not getattr(self.config, "settles", False):
            return False
        misses = [(r / len(seq), seq) for n in set(self.missing) for r, seq in self.near.get(n, [])
                  if not any(seq == f or follows(seq, f) or follows(f, seq) for f in self.found)]
        if not misses:
            return False
        _, seq = min(misses, key=lambda x: x[0])
        self.found.append(seq)
        self.missing.remove(len(seq))
        self.span1 = self.span1.without(self.layout, seq)
        self.near.clear()  # scored against the span before
        return True

    def stalled(self) -> None:
        """A round found nothing. In reduced precision, peel the found sentences approximately and
        search from here on what they leave, certifying against the whole span (a peel costs ~1.5
        CPU s at MiniLM's vocabulary, wasted where the whole span already works: CoLA batch 8)."""
        if not getattr(self.peeler, "approximate", False) or self.certify_span is not None or not self.found:
            return
        rest = None
        for seq in self.found:
            rest = self.peeler.peel(seq) or rest
        if rest is not None:
            self.certify_span = self.full_span
            self.narrow(rest)

    def certified(self, seq: list[int], res: float) -> bool:
        """Whether the layer-1 span certifies `seq` (residual `res` against the span searched);
        after an approximate peel, read again against the whole span."""
        if self.certify_span is None:
            return self.span1.certifies(res, len(seq))
        return self.certify_span.certifies(float(sequence_residuals(self.layout, self.certify_span, [seq])[0]),
                                           len(seq))

    def narrow(self, rest: Any) -> None:
        """A sentence was peeled off: search what is left of the batch."""
        self.span1 = rest.span1
        self.cands.narrow(self.layout, rest, max(self.missing))
        for n, misses in self.near.items():  # measured against the old span: kept apart (`result`)
            best = [seq for _, seq in sorted(misses, key=lambda x: x[0])]
            self.earlier[n] = list({tuple(s): s for s in best + self.earlier.get(n, [])}.values())[:EARLIER]
        self.near.clear()

    def accept_pending(self) -> None:
        """No sentence ever came out of the gradient (per-example clipping, dropout, a defence):
        the layer-1 certificate alone decides, as without a peeler."""
        if self.peeler is not None and not self.peeler.labels:
            for _, seq in sorted(self.pending, key=lambda x: x[0]):
                if len(seq) in self.missing and seq not in self.found:
                    self.found.append(seq)
                    self.missing.remove(len(seq))

    def result(self) -> tuple[list[list[int]], list[float]]:
        """Found sentences in their slots; for lengths still missing (uncertified), the best distinct
        guesses, else each position's first candidate."""
        by_length: dict[int, list[list[int]]] = {}
        for seq in self.found:
            by_length.setdefault(len(seq), []).append(seq)
        for n in self.missing:
            pool = [g for _, g in sorted(self.near.get(n, []), key=lambda x: x[0])] + self.earlier.get(n, [])
            guesses = [g for g in pool if g not in by_length.get(n, []) and not any(follows(g, f) for f in self.found)]
            by_length.setdefault(n, []).append(guesses[0] if guesses else
                                               [self._at(q, n, lambda q: self.free(q, n)[0]) for q in range(n)])
        sequences = [by_length[n].pop(0) for n in self.lengths]
        return sequences, [float(r) for r in sequence_residuals(self.layout, self.full_span, sequences)]

    def _at(self, p: int, n: int, otherwise) -> int:
        """[CLS] / [SEP] where the template puts them in a sentence of length n, else otherwise(p)."""
        if self.ends and p == 0:
            return self.cls_id
        if self.ends and p == n - 1:
            return self.sep_id
        return otherwise(p)
