"""Exact recovery from a gradient taken in train mode: dropout on, its masks unknown
(`exact-dropout`; the setting of a transformers Trainer step).

Paper anchor: Grab (Li et al., "Seeing is believing? Grab: ...", CCS 2024) recovers 92.9% of tokens
under dropout by optimising the masks jointly with the inputs. This attack reads them instead.

Threat model: honest-but-curious; the attacker holds the model (weights of the step) and sees the
full gradient of one training step of a BERT-style classifier, taken with dropout active at a rate
the capture records (else estimated); lengths declared or inferred; labels withheld or known.

How (`textleak.text.dropout_span` explains the spans):
1. Tokens: the nonzero rows of the word-embedding gradient (dropout does not touch which rows).
2. Positions: the embedding LayerNorm's orthogonality (`lk.token_positions`) holds whatever follows
   the LayerNorm, so it places most tokens exactly as in eval mode.
3. Occurrences: for each allowed (token, position), the embedding dropout masks that put its
   LayerNorm output into layer 0's Q/K/V span (binary sparse recovery, exact at rounding); as many
   per position as sentences reach it.
4. Sentences: occurrences are grouped into sentences (`Assembly`) by block-coordinate descent: at
   each position, the occurrences are assigned to the sentences reaching it by the Hungarian method
   on the layer-0 attention-output score (`ContextScorer.score`: greedy attention-dropout masks),
   sweep after sweep until nothing moves; then windows and tails are swapped between sentences.
5. Certificate: a sentence whose every token's attention-output context is put in the span by some
   attention-dropout pattern (`ContextScorer.certify`, rounding-level residuals) is certain;
   `details["certified_sentences"]` lists them, `details["certified"]` is True when all are.
6. Labels: the sign rule on the classifier weight gradient (no scale needed: clipping is common
   here), with the recovered sentences' pooled features.

Degrades: tokens whose mask is not found are placed without one (their sentence is not
certified); past the rank limit (tokens >= hidden size) it raises MissingKnowledgeError.
Arguments: `sweeps` (most assignment sweeps), `steps` (greedy drops per token when scoring),
`restarts` (pursuit restarts per shared (token, position)), `seed`. Shapes: occurrences per
position; sentences as token-id lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..errors import MissingKnowledgeError
from ..text import leakage as lk
from ..text.decode import ids_to_text
from ..text.dropout_span import ContextScorer, embedding_occurrences, hidden_rate
from ..text.inference import infer_lengths
from ..text.scale import class_labels_scale_free
from ..threat import Observation
from ..training import TrainingSettings
from .base import ATTACKS, AttackOutput
from .exact_assembly import Assembly


@ATTACKS.register("exact-dropout")
@dataclass
class ExactDropout:
    name: ClassVar[str] = "exact-dropout"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    sweeps: int = 8
    steps: int = 4
    restarts: int = 4
    seed: int = 0

    def preflight(self, observation: Observation, target: Any) -> None:
        if observation.task != "classify":
            raise MissingKnowledgeError("exact-dropout handles classification captures (masked-LM heads tie the "
                                        "word embeddings, which hides the token positions it starts from)")
        if lk.embedding_token_set(observation.gradients) is None:
            raise MissingKnowledgeError("exact-dropout needs a sparse word-embedding gradient (the token set)")

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        self.preflight(observation, target)
        t0 = time.perf_counter()
        grads, know, model, tok = observation.gradients, observation.knowledge, target.model, target.tokenizer
        settings = TrainingSettings.of(observation.metadata)
        assumed: dict[str, Any] = {"special_tokens": bool(know.special_tokens)}
        if know.seq_lengths is not None:
            lengths, assumed["seq_lengths"] = [int(n) for n in know.seq_lengths], "known"
        else:
            inferred, assumed["seq_lengths"] = infer_lengths(observation, target)
            lengths = list(inferred)
        vocab = lk.embedding_token_set(grads)
        occupants = [sum(n > i for n in lengths) for i in range(max(lengths))]
        pins = lk.token_positions(model, grads, vocab.tolist(), max(lengths), occupants)
        allowed = pins.allowed if pins is not None else [set(vocab.tolist())] * max(lengths)
        rate = settings.dropout.get("hidden") if settings.recorded else None
        occurrences, rank0 = embedding_occurrences(model, grads, allowed, occupants, rate=rate,
                                                   restarts=self.restarts, seed=self.seed)
        if rank0 >= model.config.hidden_size:
            raise MissingKnowledgeError("exact-dropout needs fewer tokens than the hidden size (no rank gap)")
        if rate is None:
            rate = round(hidden_rate(occurrences), 2)
            assumed["dropout_rate"] = f"estimated from the embedding masks found: {rate}"
        else:
            assumed["dropout_rate"] = "recorded by the capture"
        attention_rate = settings.dropout.get("attention") if settings.recorded else None
        scorer = ContextScorer(model, grads, rate, attention_rate=rate if attention_rate is None else attention_rate,
                               steps=self.steps, seed=self.seed)
        ends = (tok.cls_token_id, tok.sep_token_id) if know.special_tokens else (None, None)
        assembly = Assembly(occurrences, lengths, scorer, ends, seed=self.seed)
        assembly.search(self.sweeps)
        certified = assembly.certify()
        sequences = [[o.token for o in row] for row in assembly.rows]
        prediction = {"token_ids": sequences, "texts": [ids_to_text(tok, s) for s in sequences]}
        prediction["labels"], assumed["labels"] = self._labels(observation, model, sequences)
        details = {
            "certified": all(certified), "certified_sentences": certified, "dropout_rate": rate,
            "layer0_rank": rank0, "context_rank": scorer.rank,
            "occurrences_found": sum(len(r) for r in occurrences), "tokens": sum(lengths),
            "placed_tokens": None if pins is None else len(pins.complete), "sweeps": assembly.sweeps_run,
            "sentence_scores": [float(x) for x in assembly.scores], "seconds": time.perf_counter() - t0,
        }
        if not settings.recorded:
            details["note"] = settings.note()
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"sweeps": self.sweeps, "steps": self.steps, "restarts": self.restarts,
                                    "seed": self.seed}, details=details)

    @staticmethod
    def _labels(observation: Observation, model, sequences: Sequence[Sequence[int]]) -> tuple[list[int], str]:
        know = observation.knowledge
        if know.labels is not None:
            return [int(y) for y in know.labels], "known"
        name = lk._find(observation.gradients, r"(^|\.)classifier(\.out_proj)?\.weight$")
        L = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), L, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, s in enumerate(sequences):
            ids[b, :len(s)], mask[b, :len(s)] = torch.tensor(s), 1
        with torch.no_grad():
            pooled = model.base_model(input_ids=ids, attention_mask=mask,
                                      token_type_ids=torch.zeros_like(ids)).pooler_output
        if name is None or pooled is None:
            counts = lk.class_label_counts(observation.gradients, len(sequences))
            return [c for c, n in enumerate(counts) for _ in range(n)], "counts from the classifier bias (order unknown)"
        return class_labels_scale_free(observation.gradients[name], pooled), \
            "sign of the classifier weight gradient per example (no scale needed)"
