"""`bags`: large classification batches (MiniLM: batch 64 and up, 700-3500 tokens against a width
of 384), where the layer-1 span carries little and `beyond_rank`'s per-sentence search certifies
few sentences in its budget. ROUGE-1 scores each sentence's bag of words, so this attack spends
its effort on giving every sentence the right tokens rather than on certifying sentences.

Anchors: FILM (Gupta et al., NeurIPS 2022: the bag of words from the embedding gradient, then
beam search under a language model; single sentences from batches of 128); SOMP (Li and Li 2026:
subspace-guided orthogonal matching pursuit over the aggregated gradient's structure, meaningful
text up to batch 128); DAGER (Petrov et al. 2024) for the token placements' spirit.

Threat model: an honest-but-curious server holding the model and the full gradient of one
classification step (eval mode), with the sentence lengths declared (the capture's default);
labels are not needed (recovered afterwards from the classifier gradient as `exact` does).
What it uses (`bag_parts`): the exact token set and the placements of the embedding gradients
(`leaks.token_positions`) as columns; the bigram prior of the training split (LAMP's stand-in)
and the shares of tokens standing once to assemble the columns into sentences; the own-gradient
score to exchange tails and tokens between sentences; the last layer's per-sentence spans
(`leaks.sentence_spans`) to certify, at the end, the sentences that came out exact.

Arguments: `weight` (share cosine against bigram log-probability in the assembly), `tries`
(exchanges scored per sentence and sweep), `sweeps`, `search` (False: the assembly alone), `seed`.
Shapes: columns per position up to the longest sentence; shares [H] per token standing once;
scores [S]. Degrades: masked-LM or a tied head (no token set), lengths not declared, a step in
train mode, noise or a defence (nothing is placed): MissingKnowledgeError from `preflight`. Its
sentences are best guesses; `details["certified_share"]` says how many pass the sentence spans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import MissingKnowledgeError
from ..text.layouts import layout_for
from ..text.leaks import embedding_token_set, partial_span, sentence_spans
from ..text.leaks.positions import token_positions
from ..text.prior import load_prior
from ..threat import Observation
from ..training import TrainingSettings
from .base import ATTACKS, AttackOutput
from .bag_parts import ShareScorer, SpanScorer, SumScorer, SwapSearch, assemble, columns
from .exact.attack import _budget_report, _predict
from .exact.sequences import occupants

#: a typical spread of `SpanScorer` between right and wrong links (scratch, CoLA batch 64), so
#: that "both" weighs the two scores about alike
SPAN_SCALE = 0.05


@ATTACKS.register("bags")
@dataclass
class Bags:
    name: ClassVar[str] = "bags"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    weight: float = 3.0
    tries: int = 256
    sweeps: int = 4
    search: bool = True
    score: str = "share"  # the search's score: "share", "span" (best-effort layer-1 residual) or "both"
    drop: int = 40  # directions of 384 left out of the best-effort span (in proportion to the width)
    prior: str = "bigram"
    seed: int = 0

    def options(self) -> dict[str, Any]:
        return {"weight": self.weight, "tries": self.tries, "sweeps": self.sweeps, "search": self.search, "score": self.score, "drop": self.drop,
                "prior": self.prior, "seed": self.seed}

    def preflight(self, observation: Observation, target: Any) -> None:
        """MissingKnowledgeError (one line) where this attack cannot run (module doc)."""
        self._setup(observation, target)

    def _scorer(self, layout, grads, cols, num_labels: int):
        share = ShareScorer(layout, cols.shares, num_labels)
        if self.score == "share":
            return share
        drop = max(1, layout.hidden_size * self.drop // 384)
        span = SpanScorer(layout, partial_span([grads[n] for n in layout.qkv_names(1)], 1, drop))
        if self.score == "span":
            return span
        return SumScorer([(share, 1.0), (span, 1.0 / SPAN_SCALE)])

    def _setup(self, observation: Observation, target: Any):
        if observation.task != "classify":
            raise MissingKnowledgeError("bags needs a classification gradient (a masked-LM head is tied: no token set)")
        settings = TrainingSettings.of(observation.metadata)
        if settings.dropout_active and settings.recorded:
            raise MissingKnowledgeError("bags needs a step without dropout (its score replays the step in eval mode)")
        if observation.knowledge.seq_lengths is None:
            raise MissingKnowledgeError("bags needs the sentence lengths declared (the columns are built from them)")
        layout, grads = layout_for(target.model), observation.gradients
        layout.require(grads, [layout.word_embedding_name, layout.position_embedding_name], "bags")
        tokens = embedding_token_set(layout, grads)
        if tokens is None:
            raise MissingKnowledgeError("bags needs the token set (a sparse word-embedding gradient: an untied head)")
        return layout, tokens.tolist()

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        layout, tokens = self._setup(observation, target)
        grads, tok = observation.gradients, target.tokenizer
        lengths = [int(n) for n in observation.knowledge.seq_lengths]
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        pins = token_positions(layout, grads, tokens, max(lengths), occupants(lengths))
        if pins is None:
            raise MissingKnowledgeError("bags needs the position-embedding gradient to place tokens")
        cols = columns(grads[layout.word_embedding_name], pins, tokens, lengths, specials)
        prior = load_prior(self.prior, tok)
        tracks = assemble(cols, len(lengths), prior, tok.cls_token_id, tok.sep_token_id, self.weight)
        scorer = self._scorer(layout, grads, cols, int(target.model.config.num_labels))
        searcher = SwapSearch(scorer, tries=self.tries, seed=self.seed)
        if self.search:
            tracks = searcher.run(tracks, self.sweeps)
        spans = sentence_spans(layout, grads, len(lengths), observation.task)
        passed = spans.certifies(layout, tracks) if spans is not None else [False] * len(tracks)
        assumed: dict[str, Any] = {"seq_lengths": "known", "special_tokens": bool(observation.knowledge.special_tokens)}
        prediction = _predict(observation, layout, tok, tracks, assumed)
        details = {"certified": all(passed), "certified_share": sum(passed) / len(passed),
                   "sentence_certified": passed, "certificate": None if spans is None else "last-layer sentence spans",
                   "placed_tokens": len(pins.complete), "tokens": len(tokens), "shares": len(cols.shares),
                   "open_slots": sum(cols.open), "swaps": searcher.swaps, "scored": scorer.evaluated,
                   **_budget_report(), "seconds": time.perf_counter() - t0}
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed, config=self.options(),
                            details=details)
