"""Filling in what the attacker was not told, from the gradient alone, before an attack runs.

`complete_knowledge` returns a new `Observation` whose `Knowledge` carries recovered labels and
inferred sequence lengths, together with a record of how each fact was obtained, so results can
say "labels recovered from the classifier bias gradient" instead of silently assuming them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..errors import MissingKnowledgeError
from ..threat import Observation
from . import leaks
from .layouts import layout_for


def infer_lengths(observation: Observation, target: Any) -> tuple[tuple[int, ...], str]:
    """Sequence lengths from the gradient: the longest from the position-embedding gradient rows,
    the others from the positions where [SEP] lies in the first layer's input span."""
    grads = observation.gradients
    layout = layout_for(target.model)
    longest = leaks.max_length(layout, grads)
    if longest is None:
        raise MissingKnowledgeError("inferring sequence lengths needs the position-embedding gradient "
                                    f"({layout.position_embedding_name})")
    B = observation.knowledge.batch_size
    padding = (observation.metadata.get("capture") or {}).get("padding") or {}
    if padding.get("side") == "left":
        return _left_padded_lengths(layout, grads, target.tokenizer.cls_token_id, padding.get("length") or longest, B)
    if B == 1:
        return (longest,), "inferred from the nonzero rows of the position-embedding gradient"
    sep = target.tokenizer.sep_token_id
    span = leaks.layer_span(layout, grads, 0)
    if sep is None or not span.exact:
        return _unplaced(B, longest, "all set to the longest length (position-embedding gradient)")
    ends = [p + 1 for p in _positions_of(layout, span, sep, longest)]
    if longest not in ends:
        ends.append(longest)
    return _to_batch(sorted(ends, reverse=True), B), "inferred from [SEP] positions in the first layer's input span"


def _left_padded_lengths(layout, grads, cls: int | None, width: int, B: int | None) -> tuple[tuple[int, ...], str]:
    """Left padding ends every sentence at the padded length `width`: each sentence's length is
    `width` less the position where its [CLS] lies in the first layer's input span."""
    span = leaks.layer_span(layout, grads, 0)
    if cls is None or not span.exact:
        return _unplaced(B, width, "all set to the padded length (left padding; no [CLS] to place)")
    lengths = sorted((width - p for p in _positions_of(layout, span, cls, width)), reverse=True) or [width]
    return _to_batch(lengths, B), "inferred from [CLS] positions in the first layer's input span (left padding)"


def _positions_of(layout, span, token: int, width: int) -> list[int]:
    """The positions below `width` where `token` lies in the first layer's input span."""
    with torch.no_grad():
        ids = torch.tensor([token], device=layout.device)
        res = torch.cat([span.residual(layout.layer0_inputs(ids, p)) for p in range(width)])
    thr = leaks.calibrate_threshold(res, span.tol)
    return [p for p in range(width) if float(res[p]) <= thr]


def _unplaced(B: int | None, length: int, note: str) -> tuple[tuple[int, ...], str]:
    """Every sentence at `length` when no special token can be placed (the batch size must be known)."""
    if B is None:
        raise MissingKnowledgeError("cannot infer the batch size: the first layer's gradient has no rank gap")
    return (length,) * B, note


def _to_batch(lengths: list[int], B: int | None) -> tuple[int, ...]:
    """`lengths` (longest first) made B long: sentences of equal length share their special token's
    row, so the last length repeats; extra ones are cut."""
    if B is not None:
        lengths = (lengths + [lengths[-1]] * B)[:B]
    return tuple(lengths)


def complete_knowledge(observation: Observation, target: Any, *, labels: bool = True,
                       lengths: bool = True) -> tuple[Observation, dict[str, str]]:
    """Recover labels / infer lengths the attacker was not declared to know (where possible)."""
    know = observation.knowledge
    how: dict[str, str] = {}
    if lengths and know.seq_lengths is None:
        seq, note = infer_lengths(observation, target)
        know = replace(know, seq_lengths=seq, batch_size=know.batch_size or len(seq))
        how["seq_lengths"] = note
    if labels and know.labels is None:
        if observation.task == "classify":
            B = know.batch_size or (len(know.seq_lengths) if know.seq_lengths else None)
            if B is not None:
                counts = leaks.class_label_counts(layout_for(target.model), observation.gradients, B)
                if B == 1 or max(counts) == B:
                    know = replace(know, labels=tuple(c for c, n in enumerate(counts) for _ in range(n)))
                    how["labels"] = "recovered from the classifier bias gradient (iDLG)"
                else:
                    how["label_counts"] = f"estimated per class from the classifier bias gradient: {counts}"
        elif know.mask_positions is not None:
            M = sum(len(p) for p in know.mask_positions)
            counts = leaks.mlm_label_counts(layout_for(target.model), observation.gradients, M)
            if len(counts) == 1 and M >= 1:
                tok = next(iter(counts))
                know = replace(know, labels=tuple(tuple(tok for _ in pos) for pos in know.mask_positions))
                how["labels"] = "recovered from the output-bias gradient (one masked token)"
            else:
                how["label_candidates"] = (f"{len(counts)} masked tokens read off the output-bias gradient; "
                                           "their positions are optimised")
    return Observation(observation.gradients, observation.metadata, know), how
