"""Recovery from a step taken in train mode (dropout on, masks unknown): tokens placed by the
embedding LayerNorm's orthogonality, sentences assembled on approximate spans (`positions`).

Paper anchor: Grab (Li et al., "Seeing is believing? Grab: ..." CCS 2024) recovers 92.9% of the
tokens of a BERT step under dropout by optimising the dropout masks jointly with the inputs. This
attack optimises nothing: it reads where each token stands, which dropout does not hide.

Threat model: honest-but-curious; the attacker holds the model of the step and sees its full
gradient (any positive scale: clipping does not matter), taken in train mode with the model's
dropout; the sentence lengths are declared (or the batch is one sentence); labels known or read
off the classifier gradient.

How:
1. Tokens: the nonzero rows of the word-embedding gradient (dropout does not change which rows).
2. Positions: the gradient reaching the embedding LayerNorm's input is orthogonal to that input,
   whatever dropout does after the LayerNorm, so each token is placed at its positions to
   rounding (`leaks.token_positions`; MiniLM, SST-2 dev, clipped: every position of a single
   sentence, about 95% at batch 4, no wrong placement measured).
3. Assembly (batch > 1): which sentence holds each of a position's tokens. The Q/K/V inputs of
   layers 1 and 2 are not dropped themselves but carry the step's dropout from below, so a
   sentence computed in eval mode lies near, not in, their spans (relative residual ~0.2 for the
   true sentence; a token swapped with another sentence's raises its own to 0.3-0.5 on MiniLM).
   With the special tokens declared (the default) every sentence starts with [CLS] and ends with
   [SEP] at its declared length and no body position takes either: without that, a shorter
   sentence's [SEP] could be handed to a longer one and its last word to the shorter (Trainer
   steps, CoLA dev batch 4: ROUGE-1 77.1 without, 100 with).
   Each position's tokens placed there by step 2 must stand there in some sentence, and a token
   placed everywhere it occurs stands at most once at each; any other (frequent words) may stand
   at one position in several sentences (MiniLM, RT dev batch 8: 7 such repeats in one batch, which
   a one-token-per-sentence assignment could not reach).
   First guess (`grow`): left to right, each position's tokens go to the sentences reaching it by
   the Hungarian method on the cost of each sentence's prefix so far (closed by its last token).
   Then coordinate descent (`assembly.py`): at each position, the occupying sentences take its
   tokens by the Hungarian method on the summed squared residuals of the whole sentence at the
   span layers (per sentence only the placed tokens and a shortlist of the others, those of least
   layer-1 residual at that position in its context); two sentences swap a run of tokens from
   some position to the shorter one's end; and at each cut k the sentences reaching past k trade
   their first k tokens by the Hungarian method (any permutation, so a run misassigned round a
   cycle of three sentences comes home in one step); when a sweep of those changes nothing, the
   sentences covering a middle window of 2..`window` tokens trade those tokens the same way (a run
   traded among sentences in their middles); sweep after sweep until nothing moves
   (`sweeps` at most) or the time runs out; then more descents from random first guesses while
   the time left (`seconds`) fits one more as long as the longest so far, the lowest total cost
   kept. Each sentence is scored once (`score.py` keeps costs by sentence, and runs the sentences
   it is asked for at once sorted by length). The true batch can score lower than what the
   descent finds (MiniLM, RT dev batch 8, dropout 0.1: 10.1 against 11.0 after one descent): the
   search, not the score, limits it.
4. Labels: known, else the sign rule on the classifier weight gradient with eval-mode features
   (approximate: the classifier saw dropped features); masked-LM: the masked tokens solved from
   the prediction head's gradient as `exact` solves them (`exact.labels.mlm_labels`).

Certificates: a sentence is certain where every position it reaches holds one distinct token
placed there (a closed position): then no assembly choice was made for it. At batch 1 with every
position closed that is the whole sentence; `details["certified_sentences"]` lists them and
`details["certified"]` is True when all are. The assembly certifies nothing.

Arguments: `sweeps` (most assembly sweeps), `restarts` (most descents), `seconds` (wall seconds
after which no further descent starts and one under way stops, the first included, keeping what
it reached; None: no limit but the time budget's), `shortlist` (unplaced tokens priced per
sentence and position; None: all), `window` (the longest middle run traded; below 2: none), `layers` (whose spans score an
assembly), `grow` (the left-to-right first guess; off: each position's tokens in turn), `any_mode`
(also run on eval-mode steps, where `exact` is the attack to use; off by default), `seed`
(the restarts' first guesses). `details` records `sentences_scored`, `descents` and, under a
time budget, `budget`.
Shapes: sentences as token-id lists; spans [H, tokens].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...core import budget
from ...errors import InputError, MissingKnowledgeError
from ...text.decode import ids_to_text
from ...text.layouts import layout_for
from ...text.leaks import assign_class_labels, embedding_token_set, padded, token_positions
from ...text.padding import left_padding_refusal
from ...threat import Observation
from ...training import TrainingSettings
from ..base import ATTACKS, AttackOutput
from ..exact.labels import mlm_labels
from ..exact.sequences import occupants
from .assembly import Assembly
from .score import SpanScore, span_basis


@ATTACKS.register("positions")
@dataclass
class Positions:
    name: ClassVar[str] = "positions"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    sweeps: int = 12
    restarts: int = 3
    layers: tuple[int, ...] = (1, 2)
    grow: bool = True
    shortlist: int | None = 4
    seconds: float | None = 240.0
    window: int = 4
    any_mode: bool = False
    seed: int = 0

    def preflight(self, observation: Observation, target: Any) -> None:
        """MissingKnowledgeError when the step was not taken in train mode (there `exact`
        certifies; `any_mode=True` lifts this), the gradient lacks the embedding gradients (or
        the head is tied), several sentences come without lengths, or the capture was left-padded."""
        if not self.any_mode and not TrainingSettings.of(observation.metadata).dropout_active:
            raise MissingKnowledgeError("the positions attack is for steps taken with dropout on; this one was "
                                        "not (exact applies; any_mode=True runs it anyway)")
        why = left_padding_refusal(observation.metadata, observation.knowledge.seq_lengths, "the positions attack")
        if why:
            raise MissingKnowledgeError(why)
        self._lengths(observation, layout_for(target.model))
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"option seconds must be a positive number of seconds or null, got {self.seconds!r}")
        if self.shortlist is not None and (isinstance(self.shortlist, bool) or not isinstance(self.shortlist, int)
                                           or self.shortlist < 0):
            raise InputError(f"option shortlist must be a count of tokens (0 or more) or null, got {self.shortlist!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise InputError(f"option window must be a count of tokens (0 or more), got {self.window!r}")

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        layout = layout_for(target.model)
        grads, tok = observation.gradients, target.tokenizer
        lengths, how = self._lengths(observation, layout)
        tokens = sorted(int(t) for t in embedding_token_set(layout, grads).tolist())
        found = token_positions(layout, grads, tokens, max(lengths), occupants(lengths))
        score = SpanScore(layout, {k: span_basis(layout, grads, k, sum(lengths)) for k in self.layers
                                   if layout.shared(grads, layout.qkv_names(k))})
        ends = (tok.cls_token_id, tok.sep_token_id) if observation.knowledge.special_tokens else None
        required = [{t for t, at in found.placed.items() if i in at} for i in range(max(lengths))]
        ends = None if ends is None or None in ends else ends
        sequences, sweeps, descents = self._assemble(score, found.allowed, lengths, ends, required, found.complete)
        certain = [all(len(found.allowed[i]) == 1 and i in found.closed for i in range(n)) for n in lengths]
        prediction: dict[str, Any] = {"token_ids": sequences}
        assumed = {"seq_lengths": how, "special_tokens": bool(observation.knowledge.special_tokens)}
        if observation.task == "classify":
            prediction["labels"], assumed["labels"] = _labels(observation, layout, sequences)
        else:  # masked-LM: the masked tokens solved as exact solves them, from the head's gradient
            prediction["token_ids"], prediction["labels"], assumed["labels"], assumed["mask_positions"] = \
                mlm_labels(observation, layout, tok, sequences)
        prediction["texts"] = [ids_to_text(tok, s) for s in prediction["token_ids"]]
        # the optimisation stages match eval-mode gradients, which a train-mode step's are not: an
        # uncertified assembly is kept rather than handed to them by `auto`
        details = {"certified": all(certain), "certified_sentences": [b for b, c in enumerate(certain) if c],
                   "optimise_after": not TrainingSettings.of(observation.metadata).dropout_active,
                   "placed_tokens": {"tokens": len(tokens), "placed": len(found.complete),
                                     "closed_positions": len(found.closed), "positions": max(lengths)},
                   "sweeps": sweeps, "descents": descents, "span_layers": score.layers,
                   "sentences_scored": score.evaluated,
                   **_budget_report(), "seconds": time.perf_counter() - t0}
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"sweeps": self.sweeps, "restarts": self.restarts, "layers": list(self.layers),
                                    "shortlist": self.shortlist, "seconds": self.seconds, "window": self.window,
                                    "grow": self.grow, "any_mode": self.any_mode},
                            details=details)

    def _assemble(self, score: SpanScore, allowed, lengths, ends=None, required=None,
                  once=frozenset()) -> tuple[list[list[int]], int, int]:
        """The lowest-cost assembly over `restarts` descents (the first from the grown guess);
        a further descent starts only while the time budget is not spent and, under `seconds`,
        while the time left would fit one more as long as the longest so far (it is stopped at
        `seconds`); returns (sentences, sweeps, descents)."""
        gen = torch.Generator().manual_seed(self.seed)
        best, sweeps, start, longest, r = None, 0, time.perf_counter(), 0.0, 0
        for r in range(self.restarts if len(lengths) > 1 else 1):
            left = math.inf if self.seconds is None else self.seconds - (time.perf_counter() - start)
            if r and (budget.expired() or left < longest):
                break
            began = time.perf_counter()
            with budget.time_budget(left if math.isfinite(left) else None):
                state = Assembly(score, allowed, lengths, gen if r else None, ends, required, once, self.shortlist,
                                 self.window)
                if self.grow and not r:
                    state.grow()
                sweeps += state.descend(self.sweeps)
            longest = max(longest, time.perf_counter() - began)
            cost = state.total()
            if best is None or cost < best[0]:
                best = (cost, [list(s) for s in state.seqs])
        else:
            r += 1
        return best[1], sweeps, r

    @staticmethod
    def _lengths(observation: Observation, layout) -> tuple[list[int], str]:
        grads, know = observation.gradients, observation.knowledge
        if layout.position_embedding_name not in grads or embedding_token_set(layout, grads) is None:
            raise MissingKnowledgeError("placing tokens needs the word- and position-embedding gradients of an "
                                        "untied head")
        if know.seq_lengths is not None:
            return [int(n) for n in know.seq_lengths], "known"
        if know.batch_size == 1:
            from ...text.leaks import max_length

            return [int(max_length(layout, grads))], "inferred from the nonzero rows of the position-embedding gradient"
        raise MissingKnowledgeError("assembling several sentences needs their lengths declared")


def _labels(observation: Observation, layout, sequences: list[list[int]]) -> tuple[list[int], str]:
    know = observation.knowledge
    if know.labels is not None:
        return [int(y) for y in know.labels], "known"
    if observation.task != "classify" or layout.classifier().weight not in observation.gradients:
        return [0] * len(sequences), "not recovered"
    ids, mask = padded(sequences, layout.device)
    with torch.no_grad():
        features, logits = layout.classifier_inputs(ids, mask)
    return assign_class_labels(layout, observation.gradients, features, logits.softmax(-1), None), \
        "by the sign rule on the classifier weight gradient (eval-mode features: approximate under dropout)"


def _budget_report() -> dict[str, Any]:
    """Where a time budget applies, what it allowed and whether it cut the assembly short."""
    limit = budget.current()
    return {"budget": limit.describe()} if limit.ran_out or not math.isinf(limit.deadline) else {}
