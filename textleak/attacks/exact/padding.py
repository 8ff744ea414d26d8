"""Left-padded batches (`text.padding.LeftPadding`): one search per sentence length (and padded length).

Under left padding a sentence of n tokens stands at positions L - n .. L - 1, so where a token
stands depends on the length of its sentence, and a prefix means different positions for
different lengths. The layer-0 candidates and token placements are read once, by absolute
position over the padded length (`left_candidates`); each length is then searched on its own
(`search_left_padded`, longest first: it has no pads), reading them from its shift L - n (0 on
RoBERTa, whose pads take no position), with layer 0's rows shifted the same way (`Layout.shifted`). The peeler is shared: a sentence found
for one length comes off the batch before the next length is searched, and only the very last
sentence of the batch is peeled as the last. Under accumulation each micro-batch is padded to its own
length L, and a length found in two micro-batches is searched once for each L. Certificates are
those of any search."""

from __future__ import annotations

import copy
from dataclasses import replace
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
    width = padding.width(lengths)
    with layout.shifted(0):
        per_position, threshold = position_candidates(layout, span0, vocab, width)
    pins = positions.token_positions(layout, gradients, vocab.tolist(), width,
                                     padding.occupants(lengths) if known_lengths else None)
    cands = Candidates(per_position, specials, pins=pins, masks=masks, mask_id=mask_id, threshold=threshold)
    cands.width = width
    return cands


def search_left_padded(config: Any, layout: Layout, tokenizer: Any, cands: Candidates, lengths: Sequence[int],
                       span1: LayerSpan | None, peeler: Any, template: bool) -> tuple[list[list[int]], list[float]]:
    """(one sentence per length of `lengths`, in that order; their layer-1 residuals against `span1`).
    Leaves `layout.padding` with each of those rows' padded length (`LeftPadding.rows_padded`)."""
    base = layout.padding
    found: dict[tuple[int, int], list[tuple[list[int], float]]] = {}
    view, span = cands, span1
    groups = base.groups(lengths)
    for i, (n, L, count) in enumerate(groups):
        # this length at its micro-batch's padded length (a length may be in two, padded differently)
        layout.padding = replace(base, by_length={**base.by_length, n: L})
        view = copy.copy(view)  # what earlier searches narrowed, read from this length's shift
        view.offset = layout.padding.shift(n)
        with layout.shifted(view.offset), layer0_table(layout, n):
            search = Search(config, layout, tokenizer, view, [n] * count, span, peeler, template)
            search.later = sum(k for _, _, k in groups[i + 1:])
            seqs, _ = search.run()
            res = sequence_residuals(layout, span1, seqs).tolist() if span1 is not None else [float("nan")] * count
        found[(n, L)] = list(zip(seqs, res))
        span = search.span1  # what is left once these sentences are peeled off
    slots = list(base.slots) if len(base.slots) == len(lengths) else [base.padded_length(n) for n in lengths]
    picked = [found[(n, L)].pop(0) for n, L in zip(lengths, slots)]
    layout.padding = replace(base, rows_padded=tuple(slots))
    return [s for s, _ in picked], [float(r) for _, r in picked]
