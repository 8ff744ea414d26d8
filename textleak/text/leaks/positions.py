"""Where each input token stands, from the word- and position-embedding gradients (untied heads).

The gradient reaching a LayerNorm's input is orthogonal to that input once centred (and to the
ones vector): LayerNorm is invariant to shifting and scaling its input. Each occurrence of token t
at position i adds such a share u to row t of the word-embedding gradient and to row i of the
position-embedding gradient, with u orthogonal to E[t] + P[i] + T[0]. So a row t whose token
stands at one position only (most content words) is orthogonal to exactly that position's input,
and to no other (relative residuals ~1e-8 against ~1e-2 in float32): the token is placed. Placed
shares are subtracted from their position rows; a position row left with one unplaced occupant is
orthogonal to that occupant's input alone, which places it too, and its share comes off that
token's row, which may leave the token one position to find; repeated until nothing changes (a
peeling decoder). Tokens at several positions that this cannot separate (frequent words) stay
allowed everywhere but at closed positions. The LayerNorm is the embeddings' own (in the
embedding size, before any projection), so this holds for factorised embeddings too.

A token standing at one position in several sentences ([CLS]) sums several shares, and their
float32 rounding can pass the threshold (2.6x eps on a random 128-wide test model on one machine;
on MiniLM every such token was placed in 45 batches, `recipes/token_positions.py --n 3`): such a
token may stay unplaced, which only leaves it allowed; it is never misplaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..layouts import Layout
from .memo import as_double
from .tokens import embedding_token_set


@dataclass
class TokenPositions:
    """Where each input token stands, read off the embedding gradients (`token_positions`).

    allowed: per position, the tokens that may stand there (those placed there, and, unless the
    position is closed, every token not placed everywhere it occurs); placed: token -> the
    positions found for it; complete: tokens placed at every position they occur; closed:
    positions whose every occupant is placed; threshold: the relative residual below which a
    share counts as orthogonal (the gradient dtype's precision)."""

    allowed: list[set[int]]
    placed: dict[int, set[int]]
    complete: set[int]
    closed: set[int]
    threshold: float


class _Placement:
    """The peeling decoder's state: the word rows and position rows still unexplained."""

    def __init__(self, layout: Layout, gradients: Mapping[str, torch.Tensor], tokens: list[int], length: int,
                 occupants: Sequence[int] | None, rows: torch.Tensor | None = None, threshold: float = 0.0):
        """`rows` [len(tokens), H]: the tokens' input parts where the word rows hold more (a tied head's
        part taken off, `tied_positions`), and `threshold` that part's precision, if above the dtype's."""
        word, pos = gradients[layout.word_embedding_name], gradients[layout.position_embedding_name]
        dev = layout.device
        rows_at = layout.position_ids(torch.arange(length, device=dev))
        with torch.no_grad():
            self.E = as_double(layout.word_embeddings.weight)
            self.P = layout.position_embeddings.weight.double()[rows_at]
            t = layout.type_row()
            self.T = t.double() if t is not None else torch.zeros(self.E.shape[1], dtype=torch.double, device=dev)
        word_rows = word[torch.tensor(tokens, dtype=torch.long, device=word.device)] if rows is None else rows
        word_rows = word_rows.to(dev).double()
        self.tokens, self.length, self.occupants = tokens, length, occupants
        self.rows = {t: word_rows[i].clone() for i, t in enumerate(tokens)}
        self.scale = {t: float(self.rows[t].norm()) for t in tokens}
        self.pos_rows = pos[rows_at.to(pos.device)].to(dev).double().clone()
        self.pos_scale = self.pos_rows.norm(dim=1).clone()  # grows by each share subtracted (rounding scales with it)
        # a true share is orthogonal up to the capture's rounding (float32: below half its precision
        # in every batch measured), others near 1/sqrt(H). A looser threshold (at a gap among the
        # residuals, tried first) let a chance near-orthogonality of a token standing at two
        # positions pass: once in 138 measured batches (recipes/token_positions.py)
        dtype = word.dtype
        self.threshold = max(threshold, torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps)
        self.placed: dict[int, set[int]] = {t: set() for t in tokens}
        self.complete: set[int] = set()
        self.closed: set[int] = set()

    def inputs(self, t: int, at) -> torch.Tensor:
        z = self.E[t] + self.P[at] + self.T
        return z - z.mean(-1, keepdim=True)

    @staticmethod
    def orthogonality(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (z @ v).abs() / (z.norm(dim=-1) * v.norm()).clamp_min(1e-300)

    def place(self, t: int, i: int, share: torch.Tensor) -> None:
        self.placed[t].add(i)
        self.rows[t] -= share
        self.pos_rows[i] -= share
        self.pos_scale[i] += float(share.norm())

    def token_pass(self) -> bool:
        """Place each token whose row is orthogonal to one position's input only."""
        changed = False
        for t in self.tokens:
            if t in self.complete:
                continue
            if float(self.rows[t].norm()) <= self.threshold * self.scale[t]:
                self.complete.add(t)
                changed = True
                continue
            hits = (self.orthogonality(self.rows[t], self.inputs(t, slice(None))) < self.threshold).nonzero()
            hits = hits.flatten().tolist()
            if len(hits) == 1 and hits[0] not in self.closed:
                self.place(t, hits[0], self.rows[t].clone())
                self.complete.add(t)
                changed = True
        return changed

    def position_pass(self) -> bool:
        """Close explained positions; place a position's one unplaced occupant."""
        changed = False
        for i in range(self.length):
            if i in self.closed:
                continue
            here = [t for t in self.tokens if i in self.placed[t]]
            if float(self.pos_rows[i].norm()) <= self.threshold * float(self.pos_scale[i]) or \
                    (self.occupants is not None and len(here) >= self.occupants[i]):
                self.closed.add(i)
                changed = True
                continue
            open_ = [t for t in self.tokens if t not in self.complete]
            hits = [t for t in open_ if float(self.orthogonality(self.pos_rows[i], self.inputs(t, i))) < self.threshold]
            if len(hits) == 1:  # one occupant left unplaced: the whole rest of the row is its share
                self.place(hits[0], i, self.pos_rows[i].clone())
                self.closed.add(i)
                changed = True
        return changed

    def result(self) -> TokenPositions:
        loose = {t for t in self.tokens if t not in self.complete}
        allowed = [{t for t in self.tokens if i in self.placed[t]} | (set() if i in self.closed else loose)
                   for i in range(self.length)]
        return TokenPositions(allowed, {t: p for t, p in self.placed.items() if p}, self.complete, self.closed,
                              self.threshold)


def token_positions(layout: Layout, gradients: Mapping[str, torch.Tensor], tokens: Sequence[int],
                    length: int, occupants: Sequence[int] | None = None) -> TokenPositions | None:
    """Positions of the input tokens (see the module doc), or None when the gradient lacks the
    word- or position-embedding gradient or the former is dense (a tied head).

    `occupants` (tokens per position, from declared lengths) closes a position once as many
    tokens are placed there. The threshold is the capture's precision (its dtype's eps): under
    noise or a defence nothing is that orthogonal, nothing is placed, and layer 0's candidates
    stand as they are."""
    if layout.position_embedding_name not in gradients or embedding_token_set(layout, gradients) is None:
        return None
    return peel(_Placement(layout, gradients, [int(t) for t in tokens], length, occupants))


def peel(state: _Placement) -> TokenPositions:
    """Token and position passes until nothing changes (the module doc's peeling decoder)."""
    changed = True
    while changed:
        changed = state.token_pass()
        changed = state.position_pass() or changed
    return state.result()
