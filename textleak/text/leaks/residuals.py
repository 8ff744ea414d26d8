"""Layer-k residuals of whole or partial sentences against a layer's input span: how far each
token's layer-k input lies from the span. ~0 for every token only when the sentence is one of the
batch's (the layer-1 certificate)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..layouts import Layout
from .spans import LayerSpan


def padded(sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] (0 past each sentence's end) and the attention mask [B, L]."""
    L = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [0] * (L - len(s)) for s in sequences], dtype=torch.long, device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in sequences], dtype=torch.long, device=device)
    return ids, mask


def partial_residuals(layout: Layout, span: LayerSpan, token_ids: torch.Tensor,
                      position_ids: torch.Tensor) -> torch.Tensor:
    """Squared layer-`span.layer` residual of each token [N, m] of partial sentences: tokens
    placed at explicit (logical) positions (a prefix and the final [SEP]), the unknown rest left
    out of attention. Summed over tokens it ranks prefixes; it is ~0 only once the sentence is whole."""
    token_ids, position_ids = token_ids.to(layout.device), position_ids.to(layout.device)
    with torch.no_grad():
        h = layout.layer_inputs(token_ids, torch.ones_like(token_ids), span.layer, positions=position_ids)
    return span.residual(h.reshape(-1, h.shape[-1])).reshape(token_ids.shape) ** 2


def position_residuals(layout: Layout, span: LayerSpan, sequence: Sequence[int]) -> torch.Tensor:
    """Squared layer-`span.layer` residual at each position of one whole sequence [L]."""
    ids = torch.tensor([list(sequence)], device=layout.device)
    with torch.no_grad():
        h = layout.layer_inputs(ids, torch.ones_like(ids), span.layer)
    return span.residual(h[0]) ** 2


def sequence_residuals(layout: Layout, span: LayerSpan, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum over positions of squared layer-`span.layer` residuals, one value per sequence."""
    ids, mask = padded(sequences, layout.device)
    with torch.no_grad():
        h = layout.layer_inputs(ids, mask, span.layer)
    res = span.residual(h.reshape(-1, h.shape[-1])).reshape(len(sequences), ids.shape[1]) ** 2
    return (res * mask).sum(1)
