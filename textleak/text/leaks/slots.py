"""One token's layer-1 residual in a given context, for the cost of one token (`slot_residuals`),
and the table of layer 0's per-(token, position) rows that makes it cheaper still (`layer0_table`).

Layer 0 sees the embeddings, which do not depend on context, so the keys and values of the other
tokens are computed once and only the candidate's query, attention and feed-forward run per
(context, candidate) pair; the layer's pieces come from the layout (`Layout.block`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from typing import Sequence

import torch

from ..layouts import Block, Layout
from .spans import LayerSpan

#: a screened call (`screen`, `rough`) runs at bfloat16 only with at least this many (prefix, candidate) pairs; fewer
#: are scored as without the screen. MiniLM, one thread, AMX, the table's layer-0 rows: see `recipes/measured/
#: large_batch_s38/search_README.md` (below ~100 pairs the rescoring's second call costs more than bfloat16 saves)
SCREEN_PAIRS = 192


class _Layer0Table:
    """Layer 0's view of each (token, position): its input x and the attention's q, k, v
    [..., 4, H]. They do not depend on context, and a search asks for the same few hundred
    tokens at the same positions thousands of times; a token's rows are computed on first use,
    for every position below `length` (grown as needed)."""

    def __init__(self, layout: Layout, length: int = 1):
        self.layout = layout
        dev, dtype = layout.device, layout.word_embeddings.weight.dtype
        self.lookup = torch.full((layout.word_embeddings.num_embeddings,), -1, dtype=torch.long, device=dev)
        self.store = torch.empty(0, length, 4, layout.hidden_size, dtype=dtype, device=dev)
        self.tokens = torch.empty(0, dtype=torch.long, device=dev)
        self._rough: Block | None = None

    def rough_block(self) -> Block:
        """A bfloat16 copy of layer 0 (that layer alone), made on first use and kept for the block (its weights
        cast once, not on every call as under autocast)."""
        if self._rough is None:
            self._rough = self.layout.layer_block(copy.deepcopy(self.layout.layer(0)).to(torch.bfloat16))
        return self._rough

    def _compute(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        block = self.layout.block(0)
        with torch.no_grad():
            x = self.layout.layer0_inputs(tokens[:, None].expand(-1, length), torch.arange(length, device=tokens.device))
            return torch.stack([x, block.query(x), block.key(x), block.value(x)], 2)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows for tokens [...] at positions (broadcast against them): [..., 4, H]."""
        dev = self.store.device
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=dev)
        positions = torch.as_tensor(positions, dtype=torch.long, device=dev)
        length = self.store.shape[1]
        if positions.numel() and int(positions.max()) >= length:
            length = max(int(positions.max()) + 1, 2 * length)
            self.store = self._compute(self.tokens, length)
        new = torch.unique(tokens[self.lookup[tokens] < 0])
        if len(new):
            self.lookup[new] = torch.arange(len(self.tokens), len(self.tokens) + len(new), device=dev)
            self.tokens = torch.cat([self.tokens, new])
            self.store = torch.cat([self.store, self._compute(new, length)])
        return self.store[self.lookup[tokens], positions]


_TABLE: contextvars.ContextVar[_Layer0Table | None] = contextvars.ContextVar("layer0_table", default=None)


@contextlib.contextmanager
def layer0_table(layout: Layout, length: int = 1):
    """Within this block, `slot_residuals` reads layer 0's per-(token, position) rows from a
    table kept for the layout's model (whose weights must not change inside the block), for
    positions below `length` to begin with."""
    token = _TABLE.set(_Layer0Table(layout, length))
    try:
        yield
    finally:
        _TABLE.reset(token)


def _layer0_rows(layout: Layout, prefixes: torch.Tensor, candidates: torch.Tensor, rows: torch.Tensor,
                 first: int) -> tuple[torch.Tensor, ...]:
    """(x, q, k, v of the candidates [c, H]; k, v of the context [W, m, H]): looked up in the
    active table when there is one for this model, else computed."""
    W, p = prefixes.shape
    dev = prefixes.device
    table = _TABLE.get()
    if table is not None and table.layout.model is not layout.model:
        table = None
    if table is not None:  # [..., 4, H]: x, q, k, v
        new = table(candidates, torch.tensor(p, device=dev))
        ctx_rows = table(prefixes, torch.arange(p, device=dev))
        if rows.shape[1]:
            after = table(rows, torch.arange(first, first + rows.shape[1], device=dev))
            ctx_rows = torch.cat([ctx_rows, after.expand(W, -1, -1, -1)], 1)
        x_new, q, k_new, v_new = new.unbind(-2)
        return x_new, q, k_new, v_new, ctx_rows[..., 2, :], ctx_rows[..., 3, :]
    block = layout.block(0)
    x_new = layout.layer0_inputs(candidates, p)  # [c, H]
    x_ctx = layout.layer0_inputs(prefixes, torch.arange(p, device=dev))  # [W, p, H]
    if rows.shape[1]:
        after = layout.layer0_inputs(rows, torch.arange(first, first + rows.shape[1], device=dev))
        x_ctx = torch.cat([x_ctx, after.expand(W, -1, -1)], 1)
    return x_new, block.query(x_new), block.key(x_new), block.value(x_new), block.key(x_ctx), block.value(x_ctx)


def slot_residuals(layout: Layout, span: LayerSpan, prefixes: torch.Tensor, candidates: torch.Tensor,
                   suffix: Sequence[int] | torch.Tensor = (), suffix_at: int | None = None, screen: int = 0,
                   rough: bool = False) -> torch.Tensor:
    """Squared layer-1 residual of each candidate token [c] placed at position p after each
    prefix [W, p], followed by `suffix` (the tokens at positions p+1..., or from `suffix_at` on:
    one list for every prefix, or one row [W, m] each), attending to those tokens only (an
    unknown rest, or gap, is left out): [W, c]. Candidates [W, c] give each prefix its own.

    With no suffix it equals `partial_residuals(...)[:, -1]` for every (prefix, candidate); with
    the rest of a sentence as suffix, it is that position's share of `sequence_residuals`. It costs
    one token per pair instead of a whole sentence (post-LayerNorm layer, see the module doc);
    inside `layer0_table` even those inputs and projections are looked up, not recomputed.

    `screen` K > 0 (shared candidates, more than K of them, at least SCREEN_PAIRS pairs): every pair is first scored
    with the layer run at bfloat16 (`screened`), and only each prefix's K least are scored as without it; the rest
    read inf. `rough`: every pair scored at bfloat16 only (a screen of the caller's own)."""
    if span.layer != 1:
        raise ValueError("slot_residuals scores layer-1 inputs (layer 0 run for the slot only)")
    candidates = candidates.to(layout.device)
    if 0 < screen < candidates.shape[-1] and candidates.dim() == 1 and \
            len(prefixes) * candidates.shape[-1] >= SCREEN_PAIRS:
        return screened(layout, span, prefixes, candidates, suffix, suffix_at, screen)
    return _slot_scores(layout, span, prefixes, candidates, suffix, suffix_at, rough=rough)


def screened(layout: Layout, span: LayerSpan, prefixes: torch.Tensor, candidates: torch.Tensor,
             suffix: Sequence[int] | torch.Tensor, suffix_at: int | None, keep: int) -> torch.Tensor:
    """`slot_residuals` [W, c] with each prefix's `keep` least candidates [c] under bfloat16 autocast (on a CPU
    with AMX, or a GPU, several times cheaper a pair) scored as without the screen (float32 layer, the span's own
    score), every other pair inf: a least or a ranking read from it is the unscreened one's wherever the
    unscreened least pairs are among the screen's `keep`."""
    rough = _slot_scores(layout, span, prefixes, candidates, suffix, suffix_at, rough=True)
    kept = torch.topk(rough, keep, dim=1, largest=False).indices  # [W, keep]
    exact = _slot_scores(layout, span, prefixes, candidates[kept], suffix, suffix_at)
    out = torch.full_like(rough, float("inf"))
    return out.scatter_(1, kept, exact)


def _slot_scores(layout: Layout, span: LayerSpan, prefixes: torch.Tensor, candidates: torch.Tensor,
                 suffix: Sequence[int] | torch.Tensor, suffix_at: int | None, rough: bool = False) -> torch.Tensor:
    """`slot_residuals` unscreened, candidates [c] or [W, c]; `rough`: the layer run at bfloat16 (the span's score on
    its output cast back to float32): inside `layer0_table`, the table's rows cast and the layer's bfloat16 copy
    (`_Layer0Table.rough_block`), the softmax at float32; elsewhere under bfloat16 autocast."""
    block = layout.block(0)
    table = _TABLE.get()
    twin = rough and table is not None and table.layout.model is layout.model
    dev = layout.device
    prefixes, candidates = prefixes.to(dev), candidates.to(dev)
    W, p = prefixes.shape
    rows = suffix.to(dev) if isinstance(suffix, torch.Tensor) and suffix.dim() == 2 else \
        torch.as_tensor(list(suffix), dtype=torch.long).reshape(1, -1).to(dev)
    first = p + 1 if suffix_at is None else suffix_at
    own = candidates.dim() == 2  # each prefix its own candidates
    with torch.no_grad(), torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=rough and not twin):
        x_new, q, k_new, v_new, k_ctx, v_ctx = _layer0_rows(layout, prefixes, candidates, rows, first)
        if twin:
            block = table.rough_block()
            rows0 = (x_new, q, k_new, v_new, k_ctx, v_ctx)
            x_new, q, k_new, v_new, k_ctx, v_ctx = (t.to(torch.bfloat16) for t in rows0)
        c, H = x_new.shape[-2:]
        heads = block.heads
        d = H // heads

        def split(t):  # [..., H] -> [..., heads, d]
            return t.reshape(*t.shape[:-1], heads, d)

        k_ctx, v_ctx = split(k_ctx), split(v_ctx)  # [W, m, h, d]
        q, k_new, v_new = split(q), split(k_new), split(v_new)  # [(W,) c, h, d]
        m = k_ctx.shape[1]
        scale = d ** -0.5
        logits_ctx = torch.einsum("wchd,wmhd->wchm" if own else "chd,wmhd->wchm", q, k_ctx) * scale  # [W, c, h, m]
        logit_self = (q * k_new).sum(-1).mul(scale).expand(W, c, heads).unsqueeze(-1)  # [W, c, h, 1]
        logits = torch.cat([logits_ctx, logit_self.to(logits_ctx.dtype)], -1)
        weights = torch.softmax(logits.float() if twin else logits, -1)
        ctx = torch.einsum("wchm,wmhd->wchd", weights[..., :m], v_ctx.to(weights.dtype)) + weights[..., m:] * v_new
        if twin:
            ctx = ctx.to(torch.bfloat16)
        x = x_new.expand(W, c, H).reshape(W * c, H)
        a = block.attention_output(ctx.reshape(W * c, H), x)
        h = block.feed_forward(a)
    return (span.score(h.float() if rough else h).double() ** 2).reshape(W, c)
