"""Left padding as the victim's collator made it, for the analytic attacks to reproduce.

A tokenizer with `padding_side="left"` puts a sentence of n tokens at the end of its batch's
padded row of L tokens, and BERT-style models count position ids over the pads (the attention mask
does not shift them): the sentence's tokens stand at positions L - n .. L - 1. Pads are masked as
keys, so nothing a real token computes depends on them, but a classifier pools the row's first
position, which for every sentence shorter than L is a pad at position 0: its hidden state
attends to the sentence and feeds the loss, so its layer inputs enter the gradient too (one more
row per shorter sentence at every layer above 0; at layer 0 the pad's input, LayerNorm(E[PAD] +
P[0]), is one row shared by them all). Masked-LM reads only masked real tokens: no pad counts.

`LeftPadding` is the layout's view of that (`Layout.padding`): the attacker writes a sentence
of length n as its tokens at logical positions 0..n-1 (as without padding), and the layout
places them at their absolute positions and adds the pooled pad when it computes (`arrange`,
`restore`); layer 0's per-(token, position) rows take the shift of the sentence length being
searched (`Layout.offset`). RoBERTa (`Layout.pads_take_positions` False) numbers only the real
tokens (its position ids count the non-pad tokens from padding_idx + 1): left padding shifts
nothing there, every pad reads the position table's padding row, and only the pooled pad's extra
inputs remain (`shifts`). Which length L each sentence was padded to is public configuration
(the side, a fixed length or a multiple) together with the declared lengths (`of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch


@dataclass(frozen=True)
class LeftPadding:
    """length: L, the padded length of the batch; by_length: a different L for some sentence
    lengths (micro-batches padded on their own under gradient accumulation); slots: each
    declared sentence's padded length, in batch order (where the micro-batches are recorded);
    rows: the padded length of each row of the batch the attack computes on, once the search
    has put each sentence in its slot (a length can occur in two micro-batches padded to
    different lengths); pooled: whether the loss reads the row's first position
    (classification); pad_id: the pad token; shifts: whether pads take position ids, so that a
    padded sentence stands shifted (BERT), or not (RoBERTa: pads read the padding row)."""

    length: int
    pad_id: int
    pooled: bool = True
    by_length: Mapping[int, int] = field(default_factory=dict)
    slots: tuple[int, ...] = ()
    rows_padded: tuple[int, ...] = ()
    shifts: bool = True

    def padded_length(self, n: int) -> int:
        return max(self.by_length.get(n, self.length), n)

    def shift(self, n: int) -> int:
        """Where a sentence of n tokens starts: its position in the padded row (0 where pads take no position)."""
        return self.padded_length(n) - n if self.shifts else 0

    def width(self, lengths: Sequence[int]) -> int:
        """Logical positions the sentences of `lengths` reach."""
        return max(self.shift(n) + n for n in lengths)

    def rows(self, n: int) -> int:
        """Layer inputs a sentence of n tokens adds above layer 0: its tokens, and the pooled pad."""
        return n + int(self.pooled and n < self.padded_length(n))

    def groups(self, lengths: Sequence[int]) -> list[tuple[int, int, int]]:
        """(length n, padded length L, how many) of the sentences to search, longest first."""
        pairs = list(zip(lengths, self.slots)) if len(self.slots) == len(lengths) else \
            [(n, self.padded_length(n)) for n in lengths]
        return [(n, L, pairs.count((n, L))) for n, L in sorted(set(pairs), key=lambda x: (-x[0], x[1]))]

    def occupants(self, lengths: Sequence[int]) -> list[int]:
        """How many sentences (or pooled pads) stand at each absolute position < L (an upper bound)."""
        spans = [(L - n, L) if self.shifts else (0, n) for n, L, k in self.groups(lengths) for _ in range(k)]
        width = max(b for _, b in spans)
        # (a pooled pad stands at position 0 where pads take positions; else it reads the padding row)
        return [sum(a <= i < b or (i == 0 and self.pooled and self.shifts) for a, b in spans) for i in range(width)]

    def arrange(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(ids, mask, logical positions, index) as the victim's rows had them. Explicit
        positions (a partial sentence ending in its [SEP] at n - 1) are shifted by L - n; whole
        sentences (each row's first mask.sum() tokens) are moved to the end of their row, with the
        pooled pad at column 0 where the sentence is shorter than L. `index` [B, W] is where
        each given column went (for `restore`), None when the columns did not move."""
        dev = ids.device
        if positions is not None:
            pos = positions if positions.dim() > 1 else positions[None].expand(ids.shape[0], -1)
            n = pos.max(-1).values + 1
            L = torch.tensor([self.padded_length(int(k)) for k in n.tolist()], device=dev)
            return ids, (torch.ones_like(ids) if mask is None else mask), pos + (L - n)[:, None] * self.shifts, None
        B, W = ids.shape
        n = mask.sum(-1) if mask is not None else torch.full((B,), W, device=dev)
        L = torch.tensor(list(self.rows_padded) if len(self.rows_padded) == B else
                         [self.padded_length(int(k)) for k in n.tolist()], device=dev)
        extra = (self.pooled & (n < L)).long()
        width = int((n + extra).max())
        col = torch.arange(W, device=dev)[None]
        index = (width - n)[:, None] + col  # [B, W]
        real = col < n[:, None]
        rows = torch.arange(B, device=dev)[:, None].expand(B, W)
        new_ids = torch.full((B, width), self.pad_id, dtype=ids.dtype, device=dev)
        new_mask = torch.zeros((B, width), dtype=ids.dtype, device=dev)
        # pads at position 0 where they take positions (only the pooled one at column 0 is read),
        # else at -1: the padding row, padding_idx, of RoBERTa's table (`Layout.position_ids`)
        new_pos = torch.full((B, width), 0 if self.shifts else -1, dtype=torch.long, device=dev)
        new_ids[rows[real], index[real]] = ids[real]
        new_mask[rows[real], index[real]] = 1
        new_pos[rows[real], index[real]] = ((L - n)[:, None] * self.shifts + col).expand(B, W)[real]
        return new_ids, new_mask, new_pos, index.masked_fill(~real, 0)

    @staticmethod
    def restore(h: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Per-position outputs [B, W', ...] back at the given columns [B, W, ...]."""
        if index is None:
            return h
        return torch.gather(h, 1, index.view(*index.shape, *([1] * (h.dim() - 2))).expand(-1, -1, *h.shape[2:]))

    @classmethod
    def of(cls, metadata: Mapping[str, Any], lengths: Sequence[int] | None, task: str,
           pad_id: int | None, ordered: bool = True, shifts: bool = True) -> "LeftPadding | None":
        """The left padding a capture records (`capture.padding`), or None (right padding, or
        nothing recorded). L is the recorded length, else the fixed length, else the longest of
        `lengths` rounded up to the recorded multiple; with accumulation over micro-batches padded
        on their own, each micro-batch's recorded length goes with the lengths declared in it
        (`ordered`: `lengths` are in batch order, as declared; inferred ones are not). `shifts`:
        whether the model's pads take position ids (`Layout.pads_take_positions`)."""
        capture = metadata.get("capture") or {}
        padding = capture.get("padding") or {}
        if padding.get("side") != "left":
            return None
        longest = max(lengths) if lengths else 0
        multiple = padding.get("multiple") or 1
        L = padding.get("length") or padding.get("to") or -(-longest // multiple) * multiple
        by_length: dict[int, int] = {}
        slots: list[int] = []
        sizes = (capture.get("accumulation") or {}).get("sizes")
        micro = padding.get("lengths")
        if ordered and lengths and sizes and micro and len(sizes) == len(micro) and sum(sizes) == len(lengths):
            for size, width in zip(sizes, micro):
                slots += [int(width)] * size
            for k, width in zip(lengths, slots):
                by_length[int(k)] = max(by_length.get(int(k), 0), width)  # a length in two: the longer by default
        return cls(int(max(L, longest)), int(pad_id or 0), task == "classify", by_length, tuple(slots),
                   shifts=bool(shifts))

    def describe(self) -> str:
        """How the attack placed the sentences, for the result's `assumed` record."""
        micro = f"; per length {dict(sorted(self.by_length.items()))}" if len(set(self.by_length.values())) > 1 else ""
        return (f"left padding to {self.length} tokens{micro}: the training script's public configuration "
                "(capture.padding), sentences at positions " +
                ("L - n .. L - 1" if self.shifts else "0 .. n - 1 (pads take no position)") +
                (", a classifier pooling the pad in the row's first column" if self.pooled else ""))


def left_padding_refusal(metadata: Mapping[str, Any], lengths: Sequence[int] | None, attack: str) -> str | None:
    """Why `attack`, which reads every sentence as standing from position 0 with only its own tokens
    in the gradient, cannot read this capture: it records left padding that pads some sentence (so
    sentences stand shifted and a classifier's pooled pads add inputs), or lengths are unknown and
    the recorded padding (a fixed length or a multiple) may pad even a single sentence. None where
    nothing is padded on the left."""
    padding = LeftPadding.of(metadata, lengths, "classify", 0)
    if padding is None:
        return None
    recorded = (metadata.get("capture") or {}).get("padding") or {}
    if lengths:
        if all(padding.padded_length(int(n)) == int(n) for n in lengths):
            return None
    elif not (recorded.get("to") or recorded.get("multiple")):
        return None
    return (f"{attack} does not handle left padding: this capture was padded on the left to {padding.length} tokens "
            "(sentences stand shifted by their padding, and a classifier pools a pad); exact handles it without dropout")
