"""Exact recovery past the rank limit: classification and masked-LM batches with more tokens than
the hidden size (B x L >= H: MiniLM, RT batch 16 and up), where `exact` has no layer-1 certificate.

Anchors: DAGER's best-effort mode (Petrov et al., NeurIPS 2024: the span capped at d - 20
directions past the limit, ranking rather than certifying); SOMP (2026: subspace-guided
orthogonal matching pursuit, meaningful text up to batch 128); FILM (Gupta et al. 2022: the bag
of words from the embedding gradient, then beam search; single sentences from batches of 128).

Threat model: as `exact` (honest-but-curious server, the model known, the full gradient of one
classification or masked-LM step shared: the embeddings', layers 0 and 1's and the last layer's
weight gradients; masked-LM: the head's too, and the declared lengths and masked positions).
Lengths are used when declared; otherwise (classification) the inferred ones (past the limit only
the longest can be read off the gradient: the note says so, and `assumed["seq_lengths"]` records
it). Labels are those that make each peel exact (masked-LM: the masked tokens `Peeler` ranks on
the prediction-head gradient). Nothing is reported certified unless it passed.

What survives past the limit, and what each part does here:
- the token set (nonzero rows of the word-embedding gradient, untied heads; a tied masked-LM
  head's rows off its rank-M output span, `leaks.tied_token_set`) and, untied, where most tokens
  stand (`leaks.token_positions`; a tied head's output part hides that): the candidates per
  position (`Candidates`; masked-LM: [MASK] only at declared masked positions);
- the partial layer-1 span (`leaks.partial`, the "best-effort" span test): seeds are assembled
  and settled on its residuals exactly as `exact` does on the full span (`exact.Search`);
- one span per sentence at the last layer (`leaks.sentences`): a [CLS] classifier's last layer
  sees one vector per sentence, so its weight gradients have rank B, not B x L (a masked-LM
  head's: one per masked position, rank M); a whole sentence is certified when its [CLS] vectors
  (masked-LM: those at its slot's masked positions) lie in them (`SentenceCertificate`);
- peeling: a certified sentence's own gradient (the labels whose subtraction drops the last
  layer's rank by its terms there, `SentencePeeler`) comes off the batch's; what is left has fewer tokens,
  fewer candidates and a better partial span, and once it is under the limit the layer-1 span
  has its rank gap again and the search goes on as `exact`'s (its layer-0 candidates too).

Arguments: those of `exact` (beam, trials, restarts, settle, widen, sweeps, moves, seed) and
`drop` (directions left out of the partial span; default 40 of 384, in proportion to the width:
settling, which re-chooses each token on its own residual in context, finds more from a nearby
seed with 30-60 left out than with 10, which ranks whole sentences best, `leaks.partial`) and
`repair` (misses put right by the sentence move after every round while the span is partial;
0, the default: only when a round stalls), `finish` (the share of the time left that, far past
the limit, the lengths still missing get, assembled as `bags` does on what the peels left,
`beyond_rank_finish`; 0.5; 0: off), `prior` (that assembly's prior) and `targets` (the finish descends
its tracks onto each sentence's own last-layer [CLS] state, read off a two-class BERT pooler's
gradient, instead of exchanging tails: `leaks.pooled`, `beyond_rank_targets`; on) and `invert`
(with `targets`, the missing sentences up to this many tokens inverted from their own states first,
each certain when it lands on one: `beyond_rank_invert`; 0, off), `first` (it before the search: off).
Shapes: partial span basis [H, H - drop];
sentence spans: site -> basis [H_in, B or M]. Degrades: masked-LM without declared lengths and
masked positions, no token set (a tied classifier), weights shared across
layers, noise or a defence that hides the last layer's rank: MissingKnowledgeError from
`preflight` naming the condition; within the limit it refuses too (`exact` applies). Sentences
it cannot certify come back as its best guesses; `details["certified_share"]` says how many
passed, `details["certified"]` is True only when all did.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..core import budget
from ..errors import MissingKnowledgeError
from ..text.inference import infer_lengths
from ..text.decode import ids_to_text
from ..text.layouts import Layout, layout_for
from ..text.leaks import (SentenceSpans, embedding_token_set, layer0_table, layer_span,
                          sentence_spans, tied_token_set)
from ..text.leaks.tied_positions import placements
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .beyond_rank_finish import FINISH, BagFinish, finished
from .beyond_rank_first import FirstInversion
from .beyond_rank_peel import SentenceCertificate, SentencePeeler
from .beyond_rank_screen import LONGEST, NeighbourScreen, SentenceMove
from .exact.attack import Exact, _budget_report, _predict
from .exact.candidates import Candidates, declared_masks, vocabulary
from .exact.labels import order_by_slots
from .exact.certificates import PeelCertificate
from .exact.moves import MOVES
from .exact.search import Search
from .exact.sequences import occupants

log = logging.getLogger(__name__)

#: directions of 384 left out of the partial layer-1 span the search settles on. MiniLM, RT batch
#: 16 index 0 (392 tokens), every true sentence with 6 random tokens, settled back
#: (`recipes/beyond_rank_settle.py`): 10 left out 1 of 16, 40 5 of 16 (a scratch sweep, another
#: draw, 6 / 10 random tokens: 10 2 / 1, 30 5 / 4, 45 5 / 5, 60 6 / 5, 80 3 / 3); the whole attack
#: with a 420 s budget, side by side: 10 certified 1 sentence, 40 certified 4
#: (recipes/measured/beyond_rank_s8.md)
SETTLE_DROP = 40

#: tokens left, in widths, above which the neighbour screen runs and rounds after the first seed only
#: the lengths it takes (`SentenceSearch.far`). MiniLM: settling brings true sentences back from themselves within
#: 1.3x the width and not at 1.7x (CoLA batch 64 less its 16 shortest, 656 tokens: 9 of 48; whole, 771:
#: 5 of 64; recipes/measured/large_batch_s11.md)
FAR = 1.5

#: sentence-move steps a repaired miss gets (`SentenceSearch.repair_round`). MiniLM, CoLA batch 64
#: index 0, after one seed round: the miss 1 token from a true sentence and at least one of those 2
#: off came out true within distance + 1 steps (scratch; recipes/measured/large_batch_s11.md)
REPAIR_STEPS = 3


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

    def assembles(self) -> bool:
        return self.span1 is not None

    def worth_taking(self, seq: list[int], res: float) -> bool:
        """On the partial span the sentence spans decide; on a span with a rank gap, it does."""
        return not self.span1.exact or super().worth_taking(seq, res)

    def settle(self, seqs: list[list[int]], known: Sequence[list[int]] = ()) -> list[list[int]]:
        """`Search.settle`, skipped once the budget has run out: past the limit one round settles
        hundreds of seeds, and the budget is otherwise checked only between lengths."""
        if budget.expired():
            return [list(s) for s in seqs]
        settled = super().settle(seqs, known)
        self.screen_round(list(seqs) + settled)
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


@ATTACKS.register("beyond_rank")
@dataclass
class BeyondRank(Exact):
    name: ClassVar[str] = "beyond_rank"

    drop: int | None = None  # None: SETTLE_DROP of 384 (MiniLM, measured), in proportion to the width
    # `exact`'s moves, the sentence-span move first (`SentenceMove`: only while the span is partial)
    moves: tuple[str, ...] = ("sentence", "word", "shift", "length", "polish")
    # misses repaired by the sentence move after every round while the span is partial (0: off). Off by
    # default: on CoLA batch 64 index 0 8 per round certified 6 sentences in 1211 s (515 CPU s) against 5
    # without (534 CPU s), within noise: the pool holds few misses 1-2 tokens off (4 of 107 after one
    # round) and the score puts half of them first (recipes/measured/large_batch_s11.md)
    repair: int = 0
    # longest sentence (tokens) the neighbour screen tries while the span is partial (0: off;
    # `beyond_rank_screen`)
    screen: int = LONGEST
    # share of the time left that the lengths still missing get, assembled as `bags` does on what the peels
    # left, where the declared lengths add up to more than FAR times the width (0: off; `beyond_rank_finish`)
    finish: float = FINISH
    prior: str = "bigram"  # the finish's assembly prior (`bags`' "prior")
    # the finish descends its tracks onto the per-sentence states a two-class pooler's gradient gives
    # (`beyond_rank_targets`) instead of exchanging tails (nothing changes where no such pooler is read). On
    # since session 24, with `finish` 0.5: batch 64 side by side against targets off and finish 0.1, CoLA 39.7 ->
    # 46.7, SST-2 46.1 -> 47.5, RT 27.8 -> 28.5 (1200 s wall, large_batch_cls_s22/); RT 27.9 -> 28.1 at 600 CPU s
    # (large_batch_rt_s24/)
    targets: bool = True
    # with `targets`: missing sentences up to this many tokens inverted from their own states first, each
    # certain when its state lands on one (`beyond_rank_invert`); 0: off. CoLA batch 64, 600 CPU s, with
    # targets and finish 0.5: 8 -> 10 certified, ROUGE-1 55.3 -> 53.0 (recipes/measured/large_batch_inv_s23/); SST-2's
    # 12 certified against 11 exact was the scorer's ROUGE tie, not the certificate (large_batch_s24/)
    invert: int = 0
    # with `targets`, `invert`: inverted before the search, taken (peeled) by it (`beyond_rank_first`). Off: CoLA
    # ROUGE-1 53.5 -> 55.7, SST-2 48.6 -> 49.3 but ROUGE-2 30.6 -> 26.3, 12 -> 11 exact (large_batch_s24/)
    first: bool = False

    def options(self) -> dict[str, Any]:
        return {**super().options(), "repair": self.repair, "screen": self.screen, "finish": self.finish,
                "prior": self.prior, "targets": self.targets, "invert": self.invert, "first": self.first}

    def preflight(self, observation: Observation, target: Any) -> None:
        """MissingKnowledgeError (one line) where this attack cannot run (module doc)."""
        self._setup(observation, target)

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        layout, spans = self._setup(observation, target)
        grads, tok = observation.gradients, target.tokenizer
        lengths, assumed, notes = self._lengths_past_limit(observation, target, spans)
        vocab, vocab_source = vocabulary(layout, grads, tok, observation.task)
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        known = assumed["seq_lengths"] == "known"
        held = occupants(lengths) if known else None
        # a tied masked-LM head: its part of every word row recovered and subtracted first
        masked = sum(map(len, observation.knowledge.mask_positions or ())) if observation.task == "mlm" else 0
        pins = placements(layout, grads, vocab.tolist(), max(lengths), masked, held)
        cands = Candidates([[(int(t), 0.0) for t in vocab.tolist()] for _ in range(max(lengths))], specials, pins=pins,
                           masks=declared_masks(observation, lengths), mask_id=tok.mask_token_id)
        drop = self.drop if self.drop is not None else max(1, layout.hidden_size * SETTLE_DROP // 384)
        peeler = SentencePeeler(observation, layout, lengths, spans, drop, tok.mask_token_id)
        span1 = peeler.span1_left()
        with layer0_table(layout, max(lengths)):
            search = SentenceSearch(self, layout, tok, cands, lengths, span1, peeler, spans,
                                    observation.knowledge.special_tokens)
            finish = self._finisher(observation, layout, lengths, tok, spans.rank)
            with budget.time_budget(self._search_seconds(finish)):
                first = self._first(observation, layout, tok, spans, search, cands)
                sequences, residuals = search.run()
            if finish is not None and search.missing:
                finish.pooled = None if first is None else first.pooled
                tracks = finish.tracks(search, peeler, pins, vocab.tolist(), target.model)
                if tracks is not None:
                    sequences = finished(lengths, sequences, search.found, tracks)
        sequences, _ = order_by_slots(observation, tok, peeler, sequences, residuals)  # (masked-LM: into their slots)
        passed = self._certified(layout, spans, sequences, search)
        prediction = _predict(observation, layout, tok, sequences, assumed)
        _fill_peeled(observation, tok, peeler, sequences, prediction)
        details = {"certified": all(passed), "certified_share": sum(passed) / len(passed),
                   "sentence_certified": passed, "sentence_rank": spans.rank, "sentence_sites": sorted(spans.bases),
                   "layer1_rank_start": span1.rank, "layer1_exact_at_end": bool(search.span1.exact),
                   "peeled": len(peeler.sentences), "vocabulary": vocab_source, "notes": notes,
                   "placed_tokens": None if pins is None else len(pins.complete),
                   "finish": None if finish is None else finish.report, **_budget_report(),
                   **({"first": first.report} if first is not None else {}),
                   "seconds": time.perf_counter() - t0}
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={**self.options(), "drop": drop}, details=details)

    # -- steps -------------------------------------------------------------------------------
    def _finisher(self, observation: Observation, layout: Layout, lengths: Sequence[int], tok: Any,
                  rank: int | None = None) -> BagFinish | None:
        """The finish (`beyond_rank_finish`) where it applies: a classification step with declared lengths
        adding up to more than FAR times the width, and a share of the time for it."""
        far = sum(lengths) > FAR * layout.hidden_size
        if self.finish <= 0 or not far or observation.task != "classify" or observation.knowledge.seq_lengths is None:
            return None
        targets = (observation.gradients, rank) if self.targets and rank else None
        return BagFinish(tok, prior=self.prior, seed=self.seed, targets=targets, invert=0 if self.first else self.invert)

    def _first(self, observation: Observation, layout: Layout, tok: Any, spans: SentenceSpans, search: Search,
               cands: Candidates) -> FirstInversion | None:
        """With `targets`, `invert` and `first` (classification, positions placed): `beyond_rank_first`."""
        if not (self.first and self.targets and self.invert > 0) or observation.task != "classify" or \
                cands.pins is None or budget.expired():
            return None
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        first = FirstInversion(layout, observation.gradients, spans.rank, specials, tok.cls_token_id,
                               tok.sep_token_id, self.invert, seed=self.seed)
        first.run(search, cands.pins.allowed)
        return first

    def _search_seconds(self, finish: BagFinish | None) -> float | None:
        """The search's share of the time left (None: no limit of its own)."""
        left = budget.current().remaining()
        if finish is None or left == float("inf"):
            return None
        return max(1e-3, (1.0 - self.finish) * left)

    def _setup(self, observation: Observation, target: Any) -> tuple[Layout, SentenceSpans]:
        for name in self.moves:
            MOVES.get(name)  # an unknown move: InputError naming the registered ones
        layout, grads, know = layout_for(target.model), observation.gradients, observation.knowledge
        masks = declared_masks(observation, know.seq_lengths or ())
        if observation.task == "mlm" and masks is None:
            raise MissingKnowledgeError("masked-LM recovery past the rank limit needs the declared lengths and masked "
                                        "positions (the head reads the last layer there only)")
        layout.require(grads, layout.qkv_names(1), "recovery past the rank limit")
        if layer_span(layout, grads, 1, self.span_test).exact:
            raise MissingKnowledgeError("within the rank limit (layer 1's gradient has a rank gap): exact applies")
        if embedding_token_set(layout, grads) is None and \
                (observation.task != "mlm" or tied_token_set(layout, grads) is None):
            raise MissingKnowledgeError("recovery past the rank limit needs the token set (a sparse word-embedding "
                                        "gradient: an untied head; or a tied masked-LM head's rank-M output part)")
        batch = know.batch_size or (len(know.seq_lengths) if know.seq_lengths is not None else None)
        spans = sentence_spans(layout, grads, batch, observation.task, masks)
        if spans is None:
            raise MissingKnowledgeError("recovery past the rank limit needs the last layer's per-sentence spans (a "
                                        "[CLS] classifier's or a masked-LM head's gradient with a clear rank gap "
                                        "there, at most the batch size or the masked positions)")
        return layout, spans

    def _lengths_past_limit(self, observation: Observation, target: Any, spans: SentenceSpans
                            ) -> tuple[list[int], dict[str, Any], list[str]]:
        """Declared lengths; else the inferred ones, with a note where they could not be inferred."""
        know = observation.knowledge
        assumed: dict[str, Any] = {"special_tokens": bool(know.special_tokens)}
        if know.seq_lengths is not None:
            assumed["seq_lengths"] = "known"
            return [int(n) for n in know.seq_lengths], assumed, []
        # the last layer's rank is the number of sentences (with a nonzero loss gradient)
        sized = dataclasses.replace(observation, knowledge=dataclasses.replace(
            know, batch_size=know.batch_size or spans.rank))
        lengths, how = infer_lengths(sized, target)
        assumed["seq_lengths"] = how
        notes = []
        if "[SEP]" not in how:
            notes.append(f"past the rank limit the sentence lengths cannot be inferred from the gradient; proceeding "
                         f"with {how.split(' (')[0]} ({lengths[0]} tokens); declare them for better recovery")
            log.warning("textleak: note: %s", notes[-1])
        return list(lengths), assumed, notes

    @staticmethod
    def _certified(layout: Layout, spans: SentenceSpans, sequences: list[list[int]], search: Search) -> list[bool]:
        """Per sentence: found by the search (certified and peeled), or passing the sentence spans now."""
        found = [list(s) for s in search.found]
        out = []
        for seq in sequences:
            if seq in found:
                found.remove(seq)
                out.append(True)
            else:
                out.append(bool(spans.certifies(layout, [seq])[0]))
        return out


def _fill_peeled(observation: Observation, tok: Any, peeler: SentencePeeler, sequences: list[list[int]],
                 prediction: dict[str, Any]) -> None:
    """Masked-LM: a peeled sentence keeps the masked tokens its peel verified (the batch-wide fill
    reads every sentence's hidden states, and one wrong sentence can move a right one's tokens)."""
    if observation.task != "mlm" or observation.knowledge.mask_positions is None:
        return
    for slot, seq, labels in zip(peeler.slots, peeler.sentences, peeler.labels):
        positions = list(observation.knowledge.mask_positions[slot])
        if slot >= len(sequences) or sequences[slot] != seq or len(labels) != len(positions):
            continue
        row = list(prediction["token_ids"][slot])
        for p, t in zip(positions, labels):
            row[p] = int(t)
        prediction["token_ids"][slot] = row
        prediction["labels"][slot] = [int(t) for t in labels]
        prediction["texts"][slot] = ids_to_text(tok, row)
