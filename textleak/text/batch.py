"""Tokenising a private batch and masking it for masked-LM training, as the victim does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # [B, L] as the model sees it (masked for MLM)
    attention_mask: torch.Tensor  # [B, L]
    original_ids: torch.Tensor  # [B, L] before masking
    labels: torch.Tensor  # [B] classes, or [B, L] token ids with -100 where unlabelled
    lengths: list[int]  # tokens per example, special tokens included
    mask_positions: list[list[int]] | None = None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_positions: int, pad_to: int | None = None,
             pad_side: str | None = None, pad_multiple: int | None = None) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to the longest text or to `pad_to` tokens, rounded up to
    a multiple of `pad_multiple`, on `pad_side` (as the tokenizer's padding_side and a collator's
    pad_to_multiple_of do; None: the tokenizer's own side)."""
    texts = list(texts)
    if not texts:
        raise InputError("no text given")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text {i + 1} is empty")
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if n > max_positions:
            raise InputError(f"text {i + 1} has {n} tokens; the model takes at most {max_positions}")
        if pad_to is not None and n > pad_to:
            raise InputError(f"text {i + 1} has {n} tokens, more than the padding length {pad_to}")
    padding = {"padding": "max_length", "max_length": pad_to} if pad_to is not None else {"padding": True}
    if pad_multiple is not None:
        width = -(-max(pad_to or 0, *lengths) // pad_multiple) * pad_multiple
        if width > max_positions:
            raise InputError(f"padding to a multiple of {pad_multiple} makes {width} tokens; the model takes at most "
                             f"{max_positions}")
        padding = {"padding": "max_length", "max_length": width}
    saved = tokenizer.padding_side
    tokenizer.padding_side = pad_side or saved
    try:
        enc = tokenizer(texts, truncation=False, return_tensors="pt", **padding)
    finally:
        tokenizer.padding_side = saved
    return dict(enc)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, *, tokenizer: Any, prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """BERT's masking: choose positions with probability `prob` (at least one per example),
    replace 80% by [MASK], 10% by a random token, keep 10%. Returns inputs, labels, positions."""
    if not 0 < prob <= 1:
        raise InputError(f"mask probability must be in (0, 1], got {prob}")
    if tokenizer.mask_token_id is None:
        raise InputError("this tokenizer has no mask token; use --task classify")
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & ~special
    for b in range(input_ids.shape[0]):
        if not chosen[b].any():
            candidates = (~special[b]).nonzero().flatten()
            if len(candidates) == 0:
                raise InputError(f"text {b + 1} has no token to mask")
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
            chosen[b, pick] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=generator)
    positions = [chosen[b].nonzero().flatten().tolist() for b in range(input_ids.shape[0])]
    return masked, labels, positions


def build_batch(tokenizer: Any, texts: Sequence[str], *, task: str, labels: Sequence[int] | None,
                num_labels: int | None, mask_prob: float, max_positions: int,
                generator: torch.Generator, pad_to: int | None = None, pad_side: str | None = None,
                pad_multiple: int | None = None) -> TextBatch:
    enc = tokenize(tokenizer, texts, max_positions=max_positions, pad_to=pad_to, pad_side=pad_side,
                   pad_multiple=pad_multiple)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    lengths = attn.sum(1).tolist()
    if task == "classify":
        if labels is None:
            raise InputError("classification needs a label per text (--labels)")
        labels = list(labels)
        if len(labels) != len(ids):
            raise InputError(f"{len(labels)} labels for {len(ids)} texts")
        bad = [y for y in labels if not (isinstance(y, int) and 0 <= y < (num_labels or 0))]
        if bad:
            raise InputError(f"label {bad[0]!r} is not a class of this model (0..{(num_labels or 1) - 1})")
        return TextBatch(ids, attn, ids.clone(), torch.tensor(labels), lengths)
    special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                            for row in ids.tolist()], dtype=torch.bool) | (attn == 0)
    masked, mlm_labels, positions = mask_tokens(ids, special, tokenizer=tokenizer, prob=mask_prob,
                                                generator=generator)
    return TextBatch(masked, attn, ids.clone(), mlm_labels, lengths, positions)
