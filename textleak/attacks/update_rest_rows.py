"""Where what a peel leaves stands, from its embedding rows (`exact-update`, layered search, option `rest_rows`).

`update_batch_positions` splits a FedAvg update's position rows over its word rows (P ~ A W: a token standing
once in the batch at weight ~1 in its position's row of A). On a whole batch of 8 that ranking is loose (RT dev
batch 0 of 8, K 4, lr 1e-3: true tokens rank up to 99th at their position, 153 of 199 among the first 8), and at
lr 1e-3, where the rounding is narrow, the search does not read it (`update_batch_positions.pins_for`). But the
word and position rows are linear in the batch's sentences too, so `update_peel.UpdatePeeler` can take a found
sentence's replayed share off them as it does off layer 0's and 1's Q/K/V (with `rows`), and what is left is
split over the rows of what is left alone. Measured from the ground truth (scratch, MiniLM, RT dev batch 0 of 8,
K 4, lr 1e-3, the short sentences peeled as the true ones through `UpdatePeeler`,
`recipes/measured/fedavg_b8_rt_s21/`):

- the tokens whose rest word row still leaves its rounding box (`THRESHOLD` of the update's row) are exactly the
  missing sentences' tokens after every peel (137 -> 130, 117, 108, 98, 84 over five peels, none lost, none
  extra): the search's candidates are read among those alone (`Rest.allowed`);
- with three sentences left (38, 38, 32 tokens, 84 tokens) 81 of them are placed, all right, 14 of 38 positions
  close, and every true token ranks within its position's first 9 (101 of 102 within 8; the layer-0 candidates
  of what is left: 83 per position). With four left (one 24- or 25-token sentence still in) true tokens rank up
  to 23rd, with five up to 78th. So where at most `RANKED_LEFT` sentences are missing, each position's
  candidates are its first `RANKED_TOP` tokens in the rest's ranking (`Rest.positions`; the search drops them,
  as any placements, once its widest round fails within them).

Cost: a peel taken replays its share on the embedding rows once more (K steps, under its label); trial removals do not.

Measured (`fl_defences.py --batch-size 8 --budget 600 --fedavg 4,1e-3`, MiniLM dev batch 0, both arms at once at load
11-14, the budget counted in CPU seconds by a scratch wrapper; `recipes/measured/fedavg_b8_rt_s21/`): RT with the five
short sentences peeled first (the true ones), on: the three long ones in 49 CPU s (8.5 -> 6.1 -> 5.3 candidates per
position), the batch certified at 87 CPU s; off (82 per position): none in 350 CPU s. RT end to end (600 CPU s), on:
the whole batch exact and certified at 346 CPU s, the long ones within 57 CPU s of the fifth peel (off: 5 of 8,
uncertified at 631 CPU s); SST-2, both arms certified, on in 73 CPU s, off in 224.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch

from ..text.layouts import Layout
from ..text.leaks.positions import TokenPositions
from ..text.leaks.tokens import embedding_token_set
from .update_batch_positions import THRESHOLD, batch_positions
from .update_positions import EmbeddingRows, box_excess

# a token still stands in what is left while its rest word row leaves its rounding box by more than THRESHOLD
# (the closing test's share, `update_batch_positions.THRESHOLD`) of the update's row
#: the rest's ranking narrows the candidates where at most this many sentences are missing (module doc)
RANKED_LEFT = 3
#: ... to each position's first this many tokens (true tokens measured within the first 9 with three left)
RANKED_TOP = 12


def row_names(layout: Layout, update: Mapping[str, torch.Tensor]) -> list[str]:
    """The word and position embedding rows a peel takes shares off, where the update shares both and its word
    rows are sparse (the leaked tokens'); else none."""
    names = [layout.word_embedding_name, layout.position_embedding_name]
    if not all(n in update for n in names) or embedding_token_set(layout, update) is None:
        return []
    return names


class RestRows:
    """The tokens and ranked positions of what a peel leaves (see the module doc).

    layout: the model at w0; update: U by parameter name; lr, steps: the client's."""

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lr: float, steps: int):
        self.layout, self.lr, self.steps = layout, lr, steps
        self.tokens = embedding_token_set(layout, update).tolist()
        word = update[layout.word_embedding_name]
        self.scale = word[torch.tensor(self.tokens, device=word.device)].double().norm(dim=1).clamp_min(1e-300)
        self.last: dict[str, Any] = {}

    def read(self, rest: Mapping[str, torch.Tensor], lengths: Sequence[int]
             ) -> tuple[set[int], TokenPositions | None]:
        """(the tokens still standing in `rest` (the peeled rows, by name), their ranked positions where at most
        `RANKED_LEFT` of `lengths` (the missing sentences') are left, else None)."""
        wn, pn = self.layout.word_embedding_name, self.layout.position_embedding_name
        view = {wn: rest[wn].float(), pn: rest[pn].float()}
        rows = EmbeddingRows(self.layout, view, self.lr, self.steps, self.tokens, max(lengths))
        out = box_excess(rows.W, rows.W_half, self.scale.to(rows.W.device))
        left = [t for t, e in zip(self.tokens, out.tolist()) if e > THRESHOLD]
        self.last = {"tokens": len(left), "missing": len(lengths)}
        if len(lengths) > RANKED_LEFT or not left:
            return set(left), None
        pins, report = batch_positions(self.layout, view, self.lr, self.steps, left, lengths)
        order = getattr(pins, "order", None)
        if pins is None or order is None:
            return set(left), None
        self.last.update({k: report.get(k) for k in ("placed", "closed_positions")})
        allowed = [set(o[:RANKED_TOP]) for o in order]
        return set(left), replace(pins, allowed=allowed)
