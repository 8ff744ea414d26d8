"""Placing a single sentence from a FedAvg update's embedding rows (`exact-update` at batch 1, classification).

At every local step of a batch-1 client, the word-embedding gradient's row of token t is the sum of
the position-embedding gradient's rows of the positions where t stands: both are the gradient at
the embedding sum's input (before the embedding LayerNorm; the token-type row takes every
position's). The update U = (w0 - wK) / (lr K) averages the steps, so the relation holds for the
average gradient G too, and U holds G up to the client's float32 rounding, which
`update_rounding.rounding_box` bounds entrywise (|U - G| <= half). So a token standing once has a
word row that matches one position row inside the sum of their two boxes, and the rows of a token
standing several times match the sum of its positions' rows inside the sum of their boxes.

Measured on MiniLM (K 8, lr 1e-5, SST-2 dev sentence 0, 44 tokens): each of the 35 tokens standing
once fits its position with a relative box misfit of exactly 0 and every other position at 0.47 or
more; the three repeated tokens (9 positions) fit no single position (0.33 or more). The span search
alone read that sentence at ROUGE-1 0.517, uncertified, in 282 CPU s; with the placement it is exact
and certified in 6 CPU s (`recipes/measured/fedavg_b1_placement_s19/`: 15 of 15 sentences at lr 1e-5,
45 of 45 from lr 1e-6 to 1e-1).

The decoder (`RowPlacer`): each token that fits some single position is put at one of those (the
most constrained first, no two at one position; nearly always one choice); the tokens that fit no
single position stand more than once and share the positions left, which a least-squares split of
their word rows over those positions' rows ranks (a weight near 1 for the token standing there);
assignments are tried best first, at most `TRIALS`, and kept where each repeated token's word row
fits the sum of its positions' rows inside the box; at most `CANDIDATES` such sentences go on to the
certificate (the client's K steps replayed on the sentence, `update_sim`), which alone decides.
Where the rounding is wide against the rows (lr 1e-6, SST-2 sentence 0: 8 sentences fit, the true
one first) the replay picks among them. Where none certifies, the span search runs as before, and
where layer 0 shows no span to search, the best placed sentence is returned uncertified. An
undeclared length is read off the position rows (past the sentence they never move).

Threat model: as `attacks.update` (U, w0, K, lr and the declared length; the embedding rows are
part of the shared update). Shapes: word rows [V, E] and position rows [P, E] of U, E the
embedding width (factorised embeddings included: the relation holds before any projection).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..text.layouts import Layout, layout_for
from ..text.leaks.tokens import embedding_token_set
from ..threat import Observation
from ..training import TrainingSettings
from .base import AttackOutput
from .update_rounding import rounding_box
from .update_sim import UpdateFacts

#: a (token, positions) pair fits where its box misfit is at most this share of the token's row
#: (true pairs measured at 0; wrong ones from 0.33, the module doc)
THRESHOLD = 1e-3
#: assignments of the left positions checked against the box at most
TRIALS = 4096
#: tokens tried per left position (by the least-squares split's weight)
ALTERNATIVES = 3
#: sentences that fit the box handed to the certificate at most
CANDIDATES = 8
#: steps of the walk over the single-position tokens' choices at most (where the box is wide many fit
#: several positions, and a conflict late in the order would otherwise revisit every earlier choice)
NODES = 20000


@dataclass
class Placement:
    """What the rows placed: `candidates`, sentences whose every token fits its positions' rows (best
    first); `placed`, tokens that fit exactly one position; `left`, positions shared out among repeated
    tokens; `tried`, assignments checked against the box; `reason`, why nothing fits (None if some)."""

    candidates: list[list[int]] = field(default_factory=list)
    placed: int = 0
    left: int = 0
    tried: int = 0
    reason: str | None = None

    def describe(self) -> dict[str, object]:
        return {"candidates": len(self.candidates), "placed_by_one_row": self.placed,
                "shared_by_repeated_tokens": self.left, "assignments_tried": self.tried, "reason": self.reason}


class EmbeddingRows:
    """U's word rows `W` of `tokens` and position rows `P` of positions 0..length-1 (float64), with the
    half-widths of the boxes the client's rounding leaves around them (`W_half`, `P_half`). Shared with
    `update_batch_positions`."""

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lr: float, steps: int,
                 tokens: Sequence[int], length: int):
        word, pos = update[layout.word_embedding_name], update[layout.position_embedding_name]
        dev = word.device
        self.tokens, self.length = [int(t) for t in tokens], length
        ids = torch.tensor(self.tokens, dtype=torch.long, device=dev)
        at = layout.position_ids(torch.arange(length, device=layout.device)).to(pos.device)
        w0, p0 = layout.word_embeddings.weight.detach(), layout.position_embeddings.weight.detach()
        self.W, self.P = word[ids].double(), pos[at].double().to(dev)
        self.W_half = rounding_box(w0[ids.to(w0.device)], word[ids].to(w0.device), lr, steps).to(dev)
        self.P_half = rounding_box(p0[at.to(p0.device)], pos[at].to(p0.device), lr, steps).to(dev)


def box_excess(difference: torch.Tensor, half: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm (last dimension) of what `difference` leaves outside the box +- `half`, over `scale`."""
    return torch.relu(difference.abs() - half).norm(dim=-1) / scale


class RowPlacer(EmbeddingRows):
    """The decoder of the module doc over one sentence of `length` positions.

    layout: the model at w0 (the box is taken at the trajectory's ends); update: U by parameter name;
    lr, steps: the client's; tokens: the ids whose word rows moved."""

    def __init__(self, layout: Layout, update: Mapping[str, torch.Tensor], lr: float, steps: int,
                 tokens: Sequence[int], length: int):
        super().__init__(layout, update, lr, steps, tokens, length)
        self.scale = self.W.norm(dim=1).clamp_min(1e-300)

    def misfit(self, i: int, positions: Sequence[int]) -> float:
        """Token i's word row against the sum of `positions`' rows: the box's excess over its row's norm."""
        at = list(positions)
        return float(box_excess(self.W[i] - self.P[at].sum(0), self.W_half[i] + self.P_half[at].sum(0), self.scale[i]))

    def pair_misfits(self) -> torch.Tensor:
        """[tokens, positions]: each token standing once at each position."""
        return box_excess(self.W[:, None] - self.P[None], self.W_half[:, None] + self.P_half[None], self.scale[:, None])

    def singles(self, options: dict[int, list[int]], limit: int) -> Iterator[dict[int, int]]:
        """Placements (position -> token index) of the tokens that fit some single position, each at one
        of its fitting positions, no two at one: the most constrained first, lowest misfit first
        (depth first; at most `limit`)."""
        order = sorted(options, key=lambda i: len(options[i]))
        self.nodes = 0
        return itertools.islice(self._walk(order, options, {}), limit)

    def _walk(self, order: list[int], options: dict[int, list[int]], owner: dict[int, int]
              ) -> Iterator[dict[int, int]]:
        self.nodes += 1
        if self.nodes > NODES:
            return
        if len(owner) == len(order):
            yield dict(owner)
            return
        i = order[len(owner)]
        for p in options[i]:
            if p not in owner:
                owner[p] = i
                yield from self._walk(order, options, owner)
                del owner[p]
                if self.nodes > NODES:
                    return

    def split(self, left: list[int], rest: list[int]) -> tuple[list[list[int]], list[list[float]]]:
        """Per left position, the left tokens whose least-squares weight there is closest to 1 (word
        rows = weights x position rows), at most `ALTERNATIVES`, with their costs (1 - weight)^2."""
        weights = torch.linalg.lstsq(self.P[left].T, self.W[rest].T).solution  # [left, rest]
        cost = (1 - weights).pow(2)
        order = cost.argsort(dim=1)[:, :ALTERNATIVES].tolist()
        return [[rest[k] for k in row] for row in order], [[float(cost[j, k]) for k in row]
                                                           for j, row in enumerate(order)]

    @staticmethod
    def assignments(choices: list[list[int]], costs: list[list[float]]) -> Iterator[tuple[int, ...]]:
        """One token per left position, cheapest first (summed costs; a best-first walk over the choices)."""
        def total(pick: tuple[int, ...]) -> float:
            return sum(costs[j][k] for j, k in enumerate(pick))

        start = tuple(0 for _ in choices)
        heap, seen = [(total(start), start)], {start}
        while heap:
            _, pick = heapq.heappop(heap)
            yield tuple(choices[j][k] for j, k in enumerate(pick))
            for j in range(len(pick)):
                if pick[j] + 1 < len(choices[j]):
                    nxt = pick[:j] + (pick[j] + 1,) + pick[j + 1:]
                    if nxt not in seen:
                        seen.add(nxt)
                        heapq.heappush(heap, (total(nxt), nxt))

    def fits(self, owner: dict[int, int], tokens: Sequence[int]) -> bool:
        """Whether each of `tokens` (indices) has a word row that fits the sum of its positions' rows
        inside the box (owner: position -> token index)."""
        spots: dict[int, list[int]] = {i: [] for i in tokens}
        for p, i in owner.items():
            if i in spots:
                spots[i].append(p)
        return all(spots[i] and self.misfit(i, spots[i]) <= THRESHOLD for i in spots)

    def run(self) -> Placement:
        fitting = self.pair_misfits() <= THRESHOLD
        options = {i: sorted(fitting[i].nonzero().flatten().tolist(), key=lambda p: self.misfit(i, [p]))
                   for i in range(len(self.tokens))}
        repeated = [i for i, where in options.items() if not where]  # fits no single position: stands twice or more
        once = {i: where for i, where in options.items() if where}
        out = Placement(placed=sum(len(w) == 1 for w in once.values()))
        for owner in self.singles(once, CANDIDATES):
            left = [p for p in range(self.length) if p not in owner]
            out.left = len(left)
            if len(left) < 2 * len(repeated) or bool(left) != bool(repeated):
                continue
            choices, costs = self.split(left, repeated) if left else ([], [])
            for pick in itertools.islice(self.assignments(choices, costs), TRIALS - out.tried):
                out.tried += 1
                trial = {**owner, **dict(zip(left, pick))}
                if set(pick) >= set(repeated) and self.fits(trial, repeated):  # the rest fit by choice
                    out.candidates.append([self.tokens[trial[p]] for p in range(self.length)])
                    if len(out.candidates) >= CANDIDATES:
                        return out
        if not out.candidates:
            out.reason = f"no assignment of the positions fits every token's row inside the box " \
                         f"({out.tried} tried; {len(repeated)} tokens stand more than once)"
        return out


def placement_for(attack: Any, observation: Observation, target: Any, facts: UpdateFacts) -> Placement:
    """The decoder's placement of this update's sentence, or an empty one saying why it does not apply:
    batch 1, classification, the word- and position-embedding rows shared, one table factor (no
    per-layer clipping), float32, right padding; the option `placement` on. An undeclared length is
    read off the position rows (the last one that moved)."""
    settings, layout, grads = TrainingSettings.of(observation.metadata), layout_for(target.model), observation.gradients
    why = "option placement off" if not getattr(attack, "placement", False) else \
        "classification only" if observation.task != "classify" else \
        "batch 1 only" if declared_batch(observation) != 1 else \
        "training settings (per-layer clipping, reduced precision or left padding)" \
        if settings.per_layer_norm or settings.reduced_precision or settings.padding.get("side") == "left" else \
        "no position-embedding rows shared" if layout.position_embedding_name not in grads else None
    tokens = embedding_token_set(layout, grads) if why is None else None
    if why is None and tokens is None:
        why = "no sparse word-embedding rows shared"
    if why is not None:
        return Placement(reason=why)
    lengths = observation.knowledge.seq_lengths
    length = int(lengths[0]) if lengths else _moved_positions(layout, grads)
    return RowPlacer(layout, grads, facts.lr, facts.steps, tokens.tolist(), length).run()


def declared_batch(observation: Observation) -> int | None:
    """The number of sentences the attacker is told (the declared lengths', else the batch size; None: neither)."""
    know = observation.knowledge
    return len(know.seq_lengths) if know.seq_lengths is not None else know.batch_size


def _moved_positions(layout: Layout, grads: Mapping[str, torch.Tensor]) -> int:
    """One sentence's length: positions past it get no gradient, so their rows of U stay 0."""
    rows = grads[layout.position_embedding_name].abs().sum(1)
    logical = torch.arange(rows.shape[0] - layout.position_ids(0), device=rows.device)
    moved = rows[layout.position_ids(logical)] > 0
    return int(moved.nonzero().max()) + 1 if moved.any() else 0


def place_sentence(attack: Any, observation: Observation, target: Any, moved: Any, facts: UpdateFacts
                   ) -> AttackOutput | None:
    """The first of the placement's candidates the client's replayed steps certify, else its best
    uncertified, as the attack's output (labels read at the midpoint model `moved`, then re-solved by
    the replay); None where nothing was placed (its reason is kept on `attack._placement`)."""
    from .exact.attack import _predict

    placement = placement_for(attack, observation, target, facts)
    attack._placement = placement.describe()
    best = None
    layout, moved_layout = layout_for(target.model), layout_for(moved.model)
    for rank, sequence in enumerate(placement.candidates):
        assumed = {"special_tokens": bool(observation.knowledge.special_tokens),
                   "seq_lengths": "known" if observation.knowledge.seq_lengths else "read off the moved position rows"}
        prediction = _predict(observation, moved_layout, target.tokenizer, [sequence], assumed)
        out = AttackOutput(prediction=prediction, method=attack.name, assumed=assumed, config=attack.options(),
                           details={"certified": False, "placement": {**attack._placement, "certified_rank": None}})
        attack._certify(observation, layout, facts, out)  # (re-solves the labels; the ids stay)
        if out.details["certified"]:
            out.details["placement"]["certified_rank"] = rank
            return out
        best = best or out
    return best
