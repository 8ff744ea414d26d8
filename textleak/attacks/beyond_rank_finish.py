"""Far past the rank limit (#16: MiniLM batch 64, 700-1700 tokens against a width of 384), what
`beyond_rank`'s sentence search leaves uncertified is finished as `bags` builds its sentences
(`BagFinish`), on what the peels left of the batch.

The search certifies the sentences it finds, one at a time, and reports its closest misses for
the rest; far past the limit those misses stand most of their tokens off any sentence of the
batch (settling on the partial layer-1 span drifts off even the true sentences there,
recipes/measured/large_batch_s11.md). `bags`' assembly reads the columns the embedding gradients
leave (which tokens stand at each position) and links them into sentences by the bigram prior and
the shares of tokens standing once, then exchanges tails and tokens between sentences on the
own-gradient score: its sentences hold more of the right words (ROUGE-1 is a bag-of-words score).
Here it runs on the peeled rest: the certified sentences' tokens are out of its columns, and each
token standing once in what is left has a share of its own.

What is reserved: a share `FINISH` of the time left when the search starts, and only where the
declared lengths add up to more than `FAR` times the width (nearer, the search certifies the batch
and needs all its time: SST-2 batch 32, 478 tokens, used 781 of its 900 s, large_batch_s12.md).

Measured (MiniLM, the first dev batch of 64, budget 1200 s, one thread, load 4.6-7.1; the search's
own guesses and the finished batch scored from one run each, scratch wrapper around `recover`;
recipes/measured/large_batch_finish_s15.md): ROUGE-1/2 CoLA 36.2/19.5 -> 40.6/26.6 (8 of 64
certified, 482 CPU s), SST-2 34.9/16.7 -> 48.1/31.6 (10 certified, 596 CPU s), RT 20.5/4.8 ->
27.2/10.7 (1 certified, 563 CPU s); the tracks certify none (CoLA: they stand 2-9 tokens off the
sentences, out of the neighbour screen's reach, so they are not fed back to the search). Choosing per slot
between the search's guess and the track by the own-gradient share score (SST-2: 43.0) or the
layer-1 residual (36.0) did worse than taking every track; `bags`' assembly with a layer-1 prefix
residual in its cost read CoLA 36.5 against 32.5 but SST-2 36.2 against 39.2 (not kept).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ..core import budget
from ..errors import InputError
from ..text.prior import load_prior
from .bag_parts import ShareScorer, SwapSearch, assemble, columns
from .beyond_rank_invert import StateInversion
from .beyond_rank_search import FAR
from .beyond_rank_targets import TargetDescent

log = logging.getLogger(__name__)

#: share of the time left at the start that the finish gets (the search the rest); most of the gain is the
#: assembly itself (CoLA batch 64, budget 150: 19.2 -> 38.7 with one swap; recipes/measured/large_batch_finish_s15.md).
#: 0.5 (was 0.1) since session 24, together with `beyond_rank`'s `targets`, whose descent needs the time
#: (`beyond_rank.BeyondRank.targets` has the pairs)
FINISH = 0.5


class BagFinish:
    """Assembles the missing lengths from what the peels left (module doc).

    `tracks(search, peeler, pins, tokens, model)` -> one sentence per missing length, or None where the rest
    cannot be read as columns (no word-embedding table in the peel, nothing placed). `report["left"]`: the
    budget's seconds left as the finish began and as it ended (None: no budget)."""

    def __init__(self, tokenizer: Any, prior: str = "bigram", weight: float = 3.0, tries: int = 256,
                 sweeps: int = 4, seed: int = 0, targets: tuple[dict, int] | None = None, invert: int = 0,
                 lengths: bool = False, guided: int = 0, merge: float = 0.0, rounds: int = 0,
                 pairing: float = 0.0, iters: int = 0, drafts: int = 0, hit: float = 0.0, draft_keep: float = 0.0,
                 draft_pack: bool = False, draft_spend: bool = False, sweep_order: str = "near",
                 sweep_defer: float = 0.3, sweep_screen: int | str = "auto", draft_bfloat16: bool = True,
                 sweep_release: float = 0.0, sweep_revert: float = 0.3, lengths_delete_first: bool = False,
                 sweep_screen_copy: bool = True, cls_row_only: bool = False, pooled_normal: bool = False,
                 sweep_kick: int = 0, pooled_known: bool = False):
        self.tok, self.prior_name, self.weight = tokenizer, prior, weight
        self.tries, self.sweeps, self.seed = tries, sweeps, seed
        self.targets = targets  # (the batch's gradients, B): descend onto the pooled states (`beyond_rank_targets`)
        self.invert = invert  # longest length inverted from the states first (`beyond_rank_invert`; 0: off)
        self.pooled = None  # the pooled states read before the search (`beyond_rank_first`), reused
        self.lengths = lengths  # the descent may change a track's length (`TargetDescent.lengths`)
        self.guided = guided  # gradient-guided steps, candidates a position (`beyond_rank_guided`; 0: off)
        self.merge = merge  # pooled-state solutions this near are one state (`leaks.pooled`; 0: off)
        self.rounds, self.pairing, self.iters, self.drafts = rounds, pairing, iters, drafts  # `TargetDescent`'s
        self.hit, self.draft_keep, self.draft_pack = hit, draft_keep, draft_pack  # `TargetDescent`'s
        self.draft_spend, self.sweep_order = draft_spend, sweep_order  # `TargetDescent`'s (`order`)
        self.sweep_defer, self.sweep_screen = sweep_defer, sweep_screen  # `TargetDescent`'s `defer`, `screen`
        self.draft_bfloat16, self.sweep_release = draft_bfloat16, sweep_release  # `TargetDescent`'s (`release`)
        self.sweep_revert = sweep_revert  # `TargetDescent`'s `revert`
        self.lengths_delete_first = lengths_delete_first  # `TargetDescent`'s `delete_first`
        self.sweep_screen_copy = sweep_screen_copy  # `TargetDescent`'s `screen_copy` (`beyond_rank_rough`)
        self.cls_row_only = cls_row_only  # `TargetDescent`'s: the last layer run for [CLS] alone
        self.pooled_normal = pooled_normal  # `TargetDescent`'s: the pooled states' steps without the Jacobian
        self.sweep_kick = sweep_kick  # `TargetDescent`'s `kick`: a slow sweep's track cut and passed
        self.pooled_known = pooled_known  # `TargetDescent`'s `known`: the found sentences' states given to the solver
        self.report: dict[str, Any] = {}

    def tracks(self, search: Any, peeler: Any, pins: Any, tokens: Sequence[int], model: Any) -> list[list[int]] | None:
        missing, left = list(search.missing), _left()
        if not missing or not peeler.word or peeler.word not in peeler.rest:
            return None
        rest = search.rest  # what the last peel left, None before any peel
        if rest is not None and rest.positions is not None and rest.allowed:
            pins, tokens = rest.positions, sorted(rest.allowed)
        if pins is None:
            return None
        specials = {self.tok.cls_token_id, self.tok.sep_token_id, self.tok.pad_token_id} - {None}
        cols = columns(peeler.rest[peeler.word], pins, list(tokens), missing, specials)
        prior, prior_used = self._prior()
        tracks = assemble(cols, len(missing), prior, self.tok.cls_token_id, self.tok.sep_token_id, self.weight)
        scorer = ShareScorer(search.layout, cols.shares, int(model.config.num_labels))
        swaps = SwapSearch(scorer, tries=self.tries, seed=self.seed)
        descent = None
        if self.targets is not None and not budget.expired():
            invert = StateInversion(search.layout, self.tok.cls_token_id, self.tok.sep_token_id, longest=self.invert,
                                    seed=self.seed) if self.invert > 0 else None
            descent = TargetDescent(search.layout, self.targets[0], self.targets[1], specials, seed=self.seed,
                                    invert=invert, pooled=self.pooled, lengths=self.lengths,
                                    guided=self.guided, merge=self.merge, rounds=self.rounds,
                                    pairing=self.pairing, iters=self.iters, drafts=self.drafts,
                                    hit=self.hit, draft_keep=self.draft_keep,
                                    draft_pack=self.draft_pack, draft_spend=self.draft_spend,
                                    order=self.sweep_order, defer=self.sweep_defer, screen=self.sweep_screen,
                                    draft_bfloat16=self.draft_bfloat16, release=self.sweep_release,
                                    revert=self.sweep_revert, delete_first=self.lengths_delete_first,
                                    screen_copy=self.sweep_screen_copy, cls_row_only=self.cls_row_only,
                                    pooled_normal=self.pooled_normal, kick=self.sweep_kick,
                                    known=self.pooled_known)
            tracks = descent.run(tracks, search.found, cols.allowed)
        elif not budget.expired():
            tracks = swaps.run(tracks, self.sweeps)
        self.report = {"sentences": len(missing), "shares": len(cols.shares), "swaps": swaps.swaps,
                       "scored": scorer.evaluated, "prior": prior_used, "left": [left, _left()],
                       **({"targets": descent.report} if descent is not None else {})}
        return tracks

    def _prior(self) -> tuple[Any, str]:
        """The assembly's prior; 'none' (the shares alone) where the bigram prior has no training sentences."""
        try:
            return load_prior(self.prior_name, self.tok), self.prior_name
        except InputError:
            return load_prior("none", self.tok), "none"


def finisher(attack: Any, observation: Any, layout: Any, lengths: Sequence[int], tok: Any,
             rank: int | None = None) -> BagFinish | None:
    """`attack`'s finish (a `beyond_rank.BeyondRank`, whose options it takes) where it applies: a classification step
    with declared lengths adding up to more than FAR times the width, and a share of the time for it."""
    far = sum(lengths) > FAR * layout.hidden_size
    if attack.finish <= 0 or not far or observation.task != "classify" or observation.knowledge.seq_lengths is None:
        return None
    targets = (observation.gradients, rank) if attack.targets and rank else None
    invert = 0 if attack.first else attack.invert
    return BagFinish(tok, prior=attack.prior, seed=attack.seed, targets=targets, invert=invert,
                     lengths=attack.lengths, guided=attack.guided, merge=attack.merge,
                     rounds=attack.pooled_rounds, pairing=attack.pairing,
                     iters=attack.pooled_iters, drafts=attack.drafts, hit=attack.hit,
                     draft_keep=attack.draft_keep, draft_pack=attack.draft_pack, draft_spend=attack.draft_spend,
                     sweep_order=attack.sweep_order, sweep_defer=attack.sweep_defer,
                     sweep_screen=attack.sweep_screen, draft_bfloat16=attack.draft_bfloat16,
                     sweep_release=attack.sweep_release, sweep_revert=attack.sweep_revert,
                     lengths_delete_first=attack.lengths_delete_first, sweep_screen_copy=attack.sweep_screen_copy,
                     cls_row_only=attack.cls_row_only, pooled_normal=attack.pooled_normal,
                     sweep_kick=attack.sweep_kick, pooled_known=attack.pooled_known)


def _left() -> float | None:
    """Seconds left on the budget (one decimal; None: no budget)."""
    left = budget.current().remaining()
    return None if left == float("inf") else round(left, 1)


def finished(lengths: Sequence[int], sequences: Sequence[list[int]], found: Sequence[list[int]],
             tracks: Sequence[list[int]]) -> list[list[int]]:
    """One sentence per length of `lengths`, in that order: the found ones, then the tracks of
    each missing length, then a track of another length left over (the nearest length first: a descent
    with length moves, `TargetDescent.lengths`), then the search's own guess there."""
    by_length: dict[int, list[list[int]]] = {}
    for seq in list(found) + list(tracks):
        by_length.setdefault(len(seq), []).append(list(seq))
    out: list[list[int] | None] = [by_length[n].pop(0) if by_length.get(n) else None for n in lengths]
    left = [s for n in sorted(by_length) for s in by_length[n]]
    for i, n in enumerate(lengths):
        if out[i] is None and left:
            out[i] = left.pop(min(range(len(left)), key=lambda k: abs(len(left[k]) - n)))
    return [list(s) if s is not None else list(g) for s, g in zip(out, sequences)]
