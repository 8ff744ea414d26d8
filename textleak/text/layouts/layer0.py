"""How far every (token, position) pair's layer-0 input lies from a subspace, for the whole
vocabulary at once.

Layer 0 receives LayerNorm(E[t] + P[p] + T[0]) (then, in ALBERT, a linear projection). Screening
every token at every position by building each vector costs one [N, H] x [H, r] product per
position: about a second per position for the 30k-token vocabulary against a 384-wide span, so a
masked-LM batch (no token set, so the whole vocabulary) spent a minute and more per read, past any
budget. LayerNorm is affine in the centred sum once its scale is known, and that scale needs only
inner products, so the projection splits into a per-token part (one product for all positions) and
per-position vectors:

    c = C(E[t]) + C(q_p)                       (C: subtract the mean; q_p = P[p] + T[0])
    s = 1 / sqrt(|c|^2 / H + eps)
    h = s (g * c) + beta                        (g, beta: the norm's weight and bias)
    B^T h = s (U[t] + u_p) + b                  (U = (g * C(E)) B, u_p = (g * C(q_p)) B, b = beta B)

with |c|^2 and |h|^2 expanded the same way, so the cost is one [N, H] x [H, r] product plus
[N, H] x [H, P] products for all P positions together. Nothing here knows which family it serves:
the layout supplies the tables, the norm and the positions' rows.
"""

from __future__ import annotations

import torch
from torch import nn


def span_residuals(layout, tokens: torch.Tensor, positions: list[int], basis: torch.Tensor) -> torch.Tensor:
    """Squared relative residual 1 - |B^T h|^2 / |h|^2 of every token's layer-0 input at every
    position [P, N], computed in float64 (a screen: callers re-measure survivors exactly).
    `basis`: [H, r] orthonormal. Falls back to building each position's inputs where the layout's
    embedding norm is not a LayerNorm or a projection follows it."""
    norm, proj = layout.embedding_norm, layout.embedding_projection
    if proj is not None or not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        return _by_position(layout, tokens, positions, basis)
    with torch.no_grad():
        basis = basis.double()
        e = layout.word_embeddings.weight[tokens].double()
        q = layout.position_embeddings.weight[layout.position_ids(
            torch.tensor(positions, device=tokens.device) + layout.offset)].double()
        t = layout.type_row()
        if t is not None:
            q = q + t.double()
        g = norm.weight.double()
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(g)
        width, eps = e.shape[-1], float(norm.eps)
        ec, qc = e - e.mean(-1, keepdim=True), q - q.mean(-1, keepdim=True)         # [N, H], [P, H]
        u_tok, u_pos, b = (ec * g) @ basis, (qc * g) @ basis, beta @ basis          # [N, r], [P, r], [r]
        cross = ec @ qc.T                                                           # [N, P]
        var = ((ec * ec).sum(-1)[:, None] + 2 * cross + (qc * qc).sum(-1)[None]) / width
        s = (var + eps).rsqrt()                                                     # [N, P]
        # |B^T h|^2 = s^2 |U + u|^2 + 2 s (U + u).b + |b|^2
        uu = (u_tok * u_tok).sum(-1)[:, None] + 2 * u_tok @ u_pos.T + (u_pos * u_pos).sum(-1)[None]
        ub = (u_tok @ b)[:, None] + (u_pos @ b)[None]
        inside = s * s * uu + 2 * s * ub + b @ b
        # |h|^2 = s^2 |g c|^2 + 2 s (g beta).c + |beta|^2
        g2 = g * g
        gc2 = (ec * ec * g2).sum(-1)[:, None] + 2 * (ec * g2) @ qc.T + (qc * qc * g2).sum(-1)[None]
        gb = (ec @ (g * beta))[:, None] + (qc @ (g * beta))[None]
        total = s * s * gc2 + 2 * s * gb + beta @ beta
        return (1 - inside / total.clamp_min(1e-300)).clamp_min(0).T.contiguous()


def _by_position(layout, tokens: torch.Tensor, positions: list[int], basis: torch.Tensor,
                 chunk: int = 8192) -> torch.Tensor:
    basis32 = basis.float()
    rows = []
    with torch.no_grad():
        for p in positions:
            parts = []
            for i in range(0, len(tokens), chunk):
                h = layout.layer0_inputs(tokens[i:i + chunk], p).float()
                parts.append(1 - (h @ basis32).pow(2).sum(-1) / h.pow(2).sum(-1).clamp_min(1e-30))
            rows.append(torch.cat(parts).double())
    return torch.stack(rows)
