"""Left-padded batches (`text.padding.LeftPadding`): one search per sentence length.

Under left padding a sentence of n tokens stands at positions L - n .. L - 1, so where a token
stands depends on the length of its sentence, and a prefix means different positions for
different lengths. The layer-0 candidates and token placements are read once, by absolute
position over the padded length (`left_candidates`); each length is then searched on its own
(`search_left_padded`, longest first: it has no pads), reading them from its shift L - n, with
layer 0's rows shifted the same way (`Layout.shifted`). The peeler is shared: a sentence found
for one length comes off the batch before the next length is searched, and only the very last
sentence of the batch is peeled as the last. Certificates are those of any search."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from ...text.layouts import Layout
from ...text.leaks import LayerSpan, layer0_table, position_candidates, positions, sequence_residuals
from .candidates import Candidates
from .search import Search


def left_candidates(layout: Layout, gradients: Any, span0: LayerSpan, vocab: torch.Tensor, lengths: Sequence[int],
                    specials: set[int], *, known_lengths: bool, masks=None, mask_id=None) -> Candidates:
    """Per absolute position < L, the layer-0 candidates and token placements (`Candidates`
    with `width` L; `offset` picks a length's view)."""
    padding = layout.padding
    width = max(padding.padded_length(n) for n in lengths)
    with layout.shifted(0):
        per_position, threshold = position_candidates(layout, span0, vocab, width)
    pins = positions.token_positions(layout, gradients, vocab.tolist(), width,
                                     padding.occupants(lengths) if known_lengths else None)
    cands = Candidates(per_position, specials, pins=pins, masks=masks, mask_id=mask_id, threshold=threshold)
    cands.width = width
    return cands


def search_left_padded(config: Any, layout: Layout, tokenizer: Any, cands: Candidates, lengths: Sequence[int],
                       span1: LayerSpan | None, peeler: Any, template: bool) -> tuple[list[list[int]], list[float]]:
    """(one sentence per length of `lengths`, in that order; their layer-1 residuals against `span1`)."""
    padding = layout.padding
    found: dict[int, list[list[int]]] = {}
    view, span = cands, span1
    order = sorted(set(lengths), reverse=True)
    for i, n in enumerate(order):
        view = copy.copy(view)  # what earlier searches narrowed, read from this length's shift
        view.offset = padding.shift(n)
        with layout.shifted(padding.shift(n)), layer0_table(layout, n):
            search = Search(config, layout, tokenizer, view, [n] * lengths.count(n), span, peeler, template)
            search.later = sum(lengths.count(m) for m in order[i + 1:])
            found[n], _ = search.run()
        span = search.span1  # what is left once this length's sentences are peeled off
    sequences = [found[n].pop(0) for n in lengths]
    residuals = sequence_residuals(layout, span1, sequences).tolist() if span1 is not None else \
        [float("nan")] * len(sequences)
    return sequences, [float(r) for r in residuals]
