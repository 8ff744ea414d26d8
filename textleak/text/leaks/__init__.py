"""Analytic leaks: what a text gradient gives away with no optimisation, read straight off it.

Each module reads one kind of fact and takes the model's layout (`textleak.text.layouts`) as its
first argument, so that no leak knows a parameter name:

- `labels`: classification labels from the classifier's output-layer gradient (iDLG for one
  example, counts for a batch, per example once the inputs are known); masked tokens and their
  counts from the masked-LM output-bias gradient.
- `tokens`: the batch's token set from the nonzero rows of the word-embedding gradient (untied
  heads), from the rows that stand out of the noise, or (a tied masked-LM head) from the rows
  that leave the output layer's rank-M span; the longest length from the
  position-embedding gradient.
- `positions`: where most tokens stand, from the LayerNorm orthogonality of each occurrence's
  share of the word- and position-embedding rows (`token_positions`).
- `tied_positions`: the same under a tied masked-LM head, once the head's M hidden states are
  recovered from the dense word rows and their part subtracted (`tied_token_positions`).
- `spans`: the span of a layer's inputs from its Q/K/V weight gradients (`layer_span`, by a
  registered span test), and the layer-0 candidates per position (`position_candidates`).
- `noise`: spans read above a noise plateau (a FedAvg update's float32 rounding, additive noise
  at its Marchenko-Pastur edge) and the noise level read off signal-free entries (`noise_level`).
- `residuals`: layer-k residuals of whole and partial sentences against a span.
- `sentences`: past the rank limit, one span per sentence at a classifier's last layer (masked-LM:
  one per declared masked position), and the whole-sentence certificate it gives (`sentence_spans`); `partial`: the top directions of a
  layer span without a rank gap (DAGER's best-effort mode), which rank candidates only.
- `pooled`: past the rank limit, each sentence's own last-layer [CLS] state and label, the sentence
  spans disaggregated through a two-class BERT pooler's gradient (`pooled_states`).
- `slots`: one token's layer-1 residual in context for the cost of one token (`slot_residuals`),
  with a table of layer 0's per-(token, position) rows (`layer0_table`).

A new leak (dropout masks, clipping factors, a FedAvg update's steps) is one more module here
with the same shape: `fact(layout, gradients, ...) -> value or None`.
"""

from __future__ import annotations

from .labels import assign_class_labels, class_label_counts, mlm_label_counts
from .noise import NoiseLevel, NoisySpan, SpanReader, noise_level
from .positions import TokenPositions, token_positions
from .residuals import padded, partial_residuals, position_residuals, sequence_residuals
from .slots import layer0_table, slot_residuals
from .tied_positions import HeadStates, tied_head_states, tied_token_positions
from .partial import PartialSpan, partial_span
from .sentences import SentenceSpans, sentence_spans
from .spans import MIN_GAP, SPAN_TESTS, LayerSpan, calibrate_threshold, layer_span, position_candidates, rank_gap
from .tokens import embedding_token_set, max_length, noisy_token_set, tied_token_set

__all__ = ["NoiseLevel", "NoisySpan", "SpanReader", "noise_level", "assign_class_labels", "class_label_counts", "mlm_label_counts", "TokenPositions", "token_positions",
           "padded", "partial_residuals", "position_residuals", "sequence_residuals", "layer0_table",
           "slot_residuals", "MIN_GAP", "SPAN_TESTS", "LayerSpan", "calibrate_threshold", "layer_span",
           "position_candidates", "rank_gap", "embedding_token_set", "max_length", "noisy_token_set", "tied_token_set",
           "PartialSpan", "partial_span", "SentenceSpans", "sentence_spans", "HeadStates", "tied_head_states",
           "tied_token_positions"]
