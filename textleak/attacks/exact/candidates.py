"""What a search chooses from: per position, the tokens whose layer-0 input lies in the layer-0
span (`leaks.position_candidates`), narrowed to where the embedding gradients place tokens
(`leaks.token_positions`), to the tokens left once found sentences are peeled off, and, for
masked-LM, to [MASK] only where a slot of the sentence's length declares a masked position."""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import torch

from ...text.decode import allowed_token_ids
from ...text.layouts import Layout
from ...text.leaks import embedding_token_set, position_candidates, positions, tied_token_set
from ...text.leaks.tied_positions import placements
from ...text.leaks.spans import LayerSpan
from .sequences import occupants


def vocabulary(layout: Layout, gradients: Mapping[str, torch.Tensor], tokenizer: Any, task: str
               ) -> tuple[torch.Tensor, str]:
    """The token ids worth testing against the layer-0 span, and where they came from."""
    leaked = embedding_token_set(layout, gradients)
    tied = tied_token_set(layout, gradients) if leaked is None and task == "mlm" else None
    if leaked is not None:
        vocab, source = leaked, "nonzero rows of the word-embedding gradient"
    elif tied is not None:
        vocab, source = tied, "word-embedding rows off the tied output layer's span"
    elif task == "mlm":
        # BERT's masking swaps 10% of the chosen tokens for a random id of the whole
        # vocabulary, [unusedN] rows included: every id is tested
        vocab, source = torch.arange(len(tokenizer)), "whole vocabulary, every id (masked-LM swaps in random ids)"
    else:
        ids = allowed_token_ids(tokenizer).tolist()
        extra = [tokenizer.cls_token_id, tokenizer.sep_token_id]
        vocab, source = torch.tensor(sorted(set(ids) | {i for i in extra if i is not None})), "whole vocabulary"
    vocab = vocab.cpu()
    return vocab[vocab < layout.word_embeddings.num_embeddings], source


def declared_masks(observation: Any, lengths: Sequence[int]) -> dict[int, list[set[int]]] | None:
    """Masked-LM with declared mask positions: length -> each slot's masked positions (a slot's
    positions go with its length, so both must be declared)."""
    know = observation.knowledge
    if observation.task != "mlm" or know.mask_positions is None or know.seq_lengths is None \
            or len(know.mask_positions) != len(lengths):
        return None
    masks: dict[int, list[set[int]]] = {}
    for n, pos in zip(lengths, know.mask_positions):
        masks.setdefault(n, []).append(set(pos))
    return masks


def with_placements(per_position: list[list[tuple[int, float]]], pins: positions.TokenPositions
                    ) -> list[list[tuple[int, float]]]:
    """Each token the embedding gradients place at a position is a candidate there, last if the
    layer-0 span missed it (its residual then unknown: inf). In reduced precision layer 0's
    weakest directions drown in rounding and can miss a true token; the placements do not."""
    out = [list(c) for c in per_position]
    for token, where in pins.placed.items():
        for p in where:
            if p < len(out) and all(t != token for t, _ in out[p]):
                out[p].append((int(token), float("inf")))
    return out


class Candidates:
    """Per-position candidates and what narrows them.

    layer0: per position, (token, residual) pairs inside the layer-0 span as first read (kept for
    the report); per_position: the same, read again after each peel; pins: the token placements
    (None once dropped, or without them); allowed: the tokens left after peels (None: all);
    masks: length -> the declared masked positions of each slot of that length."""

    def __init__(self, per_position: list[list[tuple[int, float]]], specials: set[int], *,
                 pins: positions.TokenPositions | None = None, masks: dict[int, list[set[int]]] | None = None,
                 mask_id: int | None = None, threshold: float = float("nan")):
        self.layer0 = self.per_position = per_position
        self.threshold = threshold
        self.specials = set(specials)
        self.allowed: set[int] | None = None
        self.placed = self.pins = pins
        self.masks, self.mask_id = masks, mask_id
        # left padding (`search_left_padded`): per_position and pins are indexed by absolute
        # position over `width`; a search for sentences of one length reads them from `offset`
        self.offset, self.width = 0, None
        # where some slot of a length masks / where every slot of it does
        self.some = {n: set().union(*slots) for n, slots in masks.items()} if masks else {}
        self.every = {n: set.intersection(*slots) for n, slots in masks.items()} if masks else {}
        self.anywhere = set().union(*self.some.values()) if self.some else set()

    @classmethod
    def read(cls, layout: Layout, gradients: Mapping[str, torch.Tensor], span0: LayerSpan, vocab: torch.Tensor,
             lengths: Sequence[int], specials: set[int], *, known_lengths: bool,
             masks: dict[int, list[set[int]]] | None = None, mask_id: int | None = None,
             pins: positions.TokenPositions | None = None) -> "Candidates":
        """`pins`: placements read elsewhere (a FedAvg update's, `update_batch_positions`), else the
        embedding gradients' own (`placements`)."""
        per_position, threshold = position_candidates(layout, span0, vocab, max(lengths))
        # a tied masked-LM head: its part of every word row comes off first. Not for one sentence, where
        # layer 0 already narrows each position and the head-state fit (0.3-0.5 CPU s) would double
        # exact's time (MiniLM, CoLA / RT dev batch 1: 0.9-1.3 CPU s; recipes/measured/mlm_tied_exact_s15.md)
        masked = sum(len(slot) for slots in masks.values() for slot in slots) if masks and len(lengths) > 1 else 0
        if pins is None:
            pins = placements(layout, gradients, vocab.tolist(), max(lengths), masked,
                              occupants(lengths) if known_lengths else None)
        if pins is not None:  # a placement (embedding gradients, float32) outranks a noisy layer 0
            per_position = with_placements(per_position, pins)
        return cls(per_position, specials, pins=pins, masks=masks, mask_id=mask_id, threshold=threshold)

    def tokens(self) -> set[int]:
        return {t for c in self.per_position for t, _ in c}

    def free(self, p: int, n: int | None = None) -> list[int]:
        """Candidates at position p (in a sentence of length n, where known): [MASK] only
        where a slot of that length declares a masked position."""
        here = self.per_position[p + self.offset]
        ids = [t for t, _ in here if t not in self.specials and (self.allowed is None or t in self.allowed)]
        ids = ids or [t for t, _ in here if t not in self.specials] or [here[0][0]]
        if self.pins is not None and p + self.offset < len(self.pins.allowed):
            ids = [t for t in ids if t in self.pins.allowed[p + self.offset]] or ids
        if self.masks and self.mask_id in ids and p not in (self.anywhere if n is None else self.some.get(n, ())):
            ids = [t for t in ids if t != self.mask_id] or ids
        return ids

    def narrow(self, layout: Layout, rest: Any, length: int) -> None:
        """After a peel: the tokens and placements left, and, where what is left still has a
        layer-0 rank gap, the layer-0 candidates read again (fewer sentences, fewer pairs pass)
        among the tokens left, or, where the embedding gradient is dense, among the candidates so far."""
        self.allowed = rest.allowed
        if self.pins is not None and rest.positions is not None:  # (an approximate peel places nothing anew)
            self.pins = rest.positions
        if rest.span0 is not None:
            left = self.allowed if self.allowed else self.tokens()
            with layout.shifted(0) if self.width else contextlib.nullcontext():
                self.per_position, _ = position_candidates(layout, rest.span0,
                                                           torch.tensor(sorted(left | self.specials)),
                                                           self.width or length)
