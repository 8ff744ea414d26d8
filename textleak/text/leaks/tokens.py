"""Which tokens were in the batch, and how long its longest sentence was.

Token set: for heads that do not reuse the word embeddings, the nonzero rows of the word-embedding
gradient are exactly the input tokens (`embedding_token_set`); under additive noise, the rows whose
norm stands out of the noise rows' distribution (`noisy_token_set`).
Length: rows of the position-embedding gradient are nonzero for positions < the longest sequence.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..layouts import Layout


def embedding_token_set(layout: Layout, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The input token ids when the word-embedding gradient is sparse, else None (tied heads)."""
    name = layout.word_embedding_name
    if name not in gradients:
        return None
    nonzero = (gradients[name].abs().sum(1) > 0).nonzero().flatten()
    if len(nonzero) > 0.5 * gradients[name].shape[0]:
        return None  # dense: a tied output layer writes to every row
    return nonzero


def noisy_token_set(layout: Layout, gradients: Mapping[str, torch.Tensor], *, z: float = 8.0) -> torch.Tensor | None:
    """Input token ids read off a word-embedding gradient that noise has made dense, or None.

    Only for untied heads (classification), where a row is signal only if its token was in the
    batch: every other row is pure noise, so the noise-row norm distribution is estimated from
    the rows themselves (median and MAD: the few signal rows cannot move them) and the rows
    more than `z` robust standard deviations above it are kept, largest first. With 30k noise
    rows, z = 8 admits a false token with probability far below 1e-6 for Gaussian noise.
    """
    name = layout.word_embedding_name
    if name not in gradients:
        return None
    norms = gradients[name].double().norm(dim=1)
    median = norms.median()
    spread = 1.4826 * (norms - median).abs().median()
    if float(spread) <= 0:
        return None
    hits = (norms > median + z * spread).nonzero().flatten()
    if len(hits) == 0 or len(hits) > 0.01 * len(norms):
        return None  # nothing stands out, or the rows are not noise-like (e.g. a tied head)
    return hits[torch.argsort(norms[hits], descending=True)]


def max_length(layout: Layout, gradients: Mapping[str, torch.Tensor]) -> int | None:
    """The longest sequence of the batch: padded positions get no gradient."""
    name = layout.position_embedding_name
    if name not in gradients:
        return None
    rows = (gradients[name].abs().sum(1) > 0).nonzero().flatten()
    return int(rows.max()) + 1 - layout.position_offset if len(rows) else None
