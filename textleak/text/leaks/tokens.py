"""Which tokens were in the batch, and how long its longest sentence was.

Token set: for heads that do not reuse the word embeddings, the nonzero rows of the word-embedding
gradient are exactly the input tokens (`embedding_token_set`); under additive noise, the rows whose
norm stands out of the noise rows' distribution (`noisy_token_set`); for a tied masked-LM head, the
rows that leave the span the output layer writes (`tied_token_set`).
Length: rows of the position-embedding gradient are nonzero for positions < the longest sequence.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..layouts import Layout
from .memo import as_double, memo


def embedding_token_set(layout: Layout, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The input token ids when the word-embedding gradient is sparse, else None (tied heads). Read
    once per tensor version (`memo`); each caller gets its own copy."""
    name = layout.word_embedding_name
    if name not in gradients:
        return None
    rows = gradients[name]
    nonzero = memo(rows, "token_set", lambda: _nonzero_rows(rows))
    return None if nonzero is None else nonzero.clone()


def _nonzero_rows(rows: torch.Tensor) -> torch.Tensor | None:
    nonzero = (rows.abs().sum(1) > 0).nonzero().flatten()
    if len(nonzero) > 0.5 * rows.shape[0]:
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
    norms = as_double(gradients[name]).norm(dim=1)
    median = norms.median()
    spread = 1.4826 * (norms - median).abs().median()
    if float(spread) <= 0:
        return None
    hits = (norms > median + z * spread).nonzero().flatten()
    if len(hits) == 0 or len(hits) > 0.01 * len(norms):
        return None  # nothing stands out, or the rows are not noise-like (e.g. a tied head)
    return hits[torch.argsort(norms[hits], descending=True)]


#: a tied head's output part: the least gap between its last singular value and the next
TIED_GAP = 100.0
#: the vocabulary must have this many rows per hidden unit (the inputs a small minority of the rows)
TIED_ROWS = 20
#: rows sampled (evenly, among the smaller 90%) to read the output part's span
TIED_SAMPLE = 2048
#: a row is an input token's when this share of its norm lies off the output part's span
TIED_OFF = 1e-4


def tied_token_set(layout: Layout, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The input token ids of a masked-LM step whose output layer reuses the word embeddings, or
    None where they cannot be read (no tied head; a vocabulary under `TIED_ROWS` rows per hidden
    unit; no rank gap: reduced precision, noise, or masked positions beyond a quarter of the sample).

    A tied head adds its own gradient to every row: logits = W h_m + b at each labelled (masked)
    position m, so row v gets sum_m (softmax_m[v] - [v is m's target]) h_m, a vector in the span of
    the M transformed hidden states h_m. The input rows add each occurrence's input gradient,
    which has no reason to lie in that M-dimensional span. So the rows of tokens outside the input
    share one rank-M span, read off an even sample of the smaller rows (inputs are a few hundred of
    30k rows; the targets' rows are large and skipped, but lie in it too), and the input tokens are
    the rows with more than `TIED_OFF` of their norm off it (`output_span` drops an input row that
    the sample caught). Measured on MiniLM, first dev batch (CoLA 4, RT 16, SST-2 32 sentences):
    the span's rank is M exactly (7, 64, 73), the gap 1.4e3-5e4; input rows keep 3-12% of their
    norm off it, the others at most 6e-7; 0.3-0.6 CPU s at MiniLM's vocabulary.
    [MASK] and the random ids BERT's masking swaps in are inputs too."""
    name = layout.word_embedding_name
    if name not in gradients or not layout.tied:
        return None
    rows, width = gradients[name].shape
    if rows < TIED_ROWS * width:
        return None
    found = memo(gradients[name], "tied_token_set", lambda: _tied_rows(gradients[name]))
    return None if found is None else found.clone()


def _tied_rows(grad: torch.Tensor) -> torch.Tensor | None:
    """`tied_token_set`'s reading of one word-embedding gradient [V, H]."""
    W = as_double(grad)
    norms = W.norm(dim=1)
    span = tied_output_span(grad)
    if span is None:
        return None
    off = norms.pow(2) - (W @ span.T).pow(2).sum(1)  # squared norm off the span (double: exact to 1e-16)
    hits = (off > (TIED_OFF * norms).pow(2)).nonzero().flatten()
    if len(hits) == 0 or len(hits) > 0.1 * len(norms):
        return None
    return hits


def tied_output_span(grad: torch.Tensor) -> torch.Tensor | None:
    """The rank-M span [M, H] a tied head's part of the word rows shares (`output_span` of an even
    sample of the smaller 90% of the rows), read once per gradient (`memo`): the token set and the
    head-state fit (`tied_positions`) both need it."""

    def read() -> torch.Tensor | None:
        W = as_double(grad)
        norms = W.norm(dim=1)
        bulk = (norms <= norms.kthvalue(max(1, int(0.9 * len(norms)))).values).nonzero().flatten()
        return output_span(W[bulk[torch.linspace(0, len(bulk) - 1, min(TIED_SAMPLE, len(bulk))).long()]])

    return memo(grad, "tied_output_span", read)


def output_span(sample: torch.Tensor, rounds: int = 4) -> torch.Tensor | None:
    """An orthonormal basis [k, H] of the low-rank span that all but a few rows of `sample` share,
    or None where no rank gap of `TIED_GAP` shows at k <= rows / 4 (the last such gap is the rank).
    An input row sampled by chance spans a direction of its own: its leverage (its share of the
    basis' weight) is near 1. Rows over 0.5 are dropped and the span read again until the rank stays
    (a row of the shared part can carry much of one direction too, but dropping it leaves the rank
    as it was; RT dev batch 16 with 40 input rows put in the sample: rank 113, then 64 = M
    twice)."""
    previous = None
    for _ in range(rounds):
        U, S, Vh = torch.linalg.svd(sample, full_matrices=False)
        top = min(len(S) - 1, sample.shape[0] // 4)
        if top < 1 or float(S[0]) <= 0:
            return None
        ratio = S[:top] / S[1:top + 1].clamp_min(float(S[0]) * 1e-300)
        gaps = (ratio >= TIED_GAP).nonzero().flatten()
        if len(gaps) == 0:
            return None
        # the last gap: a masked position whose prediction is sure shows weakly in the sample's rows
        # (its target's row carries it, and is large: left out), so the signal can have gaps too
        k = int(gaps[-1]) + 1
        alone = U[:, :k].pow(2).sum(1) > 0.5
        if k == previous or not alone.any():
            return Vh[:k]
        previous, sample = k, sample[~alone]
    return None


def max_length(layout: Layout, gradients: Mapping[str, torch.Tensor]) -> int | None:
    """The longest sequence of the batch: padded positions get no gradient."""
    name = layout.position_embedding_name
    if name not in gradients:
        return None
    rows = (gradients[name].abs().sum(1) > 0).nonzero().flatten()
    return int(rows.max()) + 1 - layout.position_offset if len(rows) else None
