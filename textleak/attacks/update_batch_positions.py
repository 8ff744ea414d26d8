"""Where a FedAvg batch's tokens stand, from the update's embedding rows (`exact-update`, batch > 1).

Each occurrence of token t at position p adds one share to word row t and to position row p of the
average gradient G (`update_positions`' relation, summed over the batch's sentences): position row
p is the sum of its occupants' shares, word row t the sum of its occurrences'. So the position rows
P (0..L-1) lie, up to the client's float32 rounding, in the span of the word rows W of the leaked
tokens, and the least-squares split P ~ A W puts a token standing once in the batch at weight ~1 in
its position's row of A and ~0 elsewhere (a token at several positions splits its weight).

Read (`batch_positions`):
- placed: a token whose column of A tops at >= `TOP` at one position while every other stays
  below `TOP` stands there (it may stand elsewhere too). Measured before this module (scratch probe,
  MiniLM, K 8): every token standing once placed right (SST-2 dev batch 0 of 4, lr 1e-4: 55 of 55;
  RT batch 4 lr 1e-4, CoLA batch 4 lr 1e-5, SST-2 / RT batch 8 lr 1e-3 likewise); tokens standing
  more than once placed at one of their true positions, never a wrong one, in those 5 batches.
- closed: position p whose row minus the summed word rows of the tokens placed there fits inside
  the summed rounding boxes (`update_rounding.rounding_box`; relative excess at most `THRESHOLD`)
  holds exactly those tokens, each standing nowhere else (a token standing elsewhere too would
  bring that share along, which the box does not hold). Its tokens are complete.
- allowed: per position, the tokens placed there and, unless it is closed, every token not complete.

So a token leaves a position's candidates only where a closed position's fit vouches for it standing
elsewhere alone, or where the position itself is closed without it: the same evidence that certifies
a batch-1 sentence's placement. Special tokens ([CLS], [SEP]) are left to the search's template.
Nothing is placed where the box is wider than `BOX_LIMIT` of the position rows (lr ~1e-6 on MiniLM).

Measured on MiniLM, K 8, dev batches of 4 (session 19, ground truth): SST-2 batch 0 lr 1e-4, 64 of 68
tokens placed, 19 of 44 positions closed, 23.4 of 68 tokens allowed per position on average; RT batch 0
lr 1e-4: 84 of 92, 11 of 38, 44.8 of 92; CoLA batch 0 lr 1e-5: 27 of 27, 7 of 13, 5.2 of 27. No true
token left its position's allowed set there, nor in SST-2 / RT batch 1 and CoLA batch 2 at lr 1e-4,
SST-2 / RT batch 0 of 8 at lr 1e-3 (K 8), SST-2 batch 0 at K 4 lr 1e-2, RT batch 0 at K 4 lr 1e-3; in
all these the closed positions' misfit was 0 and the least left open 0.017-0.056. At lr 1e-6 (CoLA
batch 0, box 2.8 x the rows) placements go wrong and 8 true tokens were lost: hence `BOX_LIMIT`.
Strict closure (session 27, option `strict_closure`): at lr 1e-5 the box can hold a whole token's share. Ground truth
(MiniLM, K 8, RT dev batches 0 and 2 of 4, box 0.31 / 0.25; `recipes/measured/fedavg_small_lr_s27`): 6 positions
closed with 3 tokens placed for 4 sentences standing there (misfit 0-2.2e-4; the missing token's word row 6e-4 against
a box of norm 1.9e-3), shutting "how", "may", "is", "an", "of", "-" out of their positions; and "," placed at a closed
position (weight 0.503 there) stood at the next one too (0.239), so was wrongly complete. With the option a position
closes only where it has one placed token per sentence standing there (position 0 excepted: the template's first
token stands there in every sentence), and a placed token is complete only at weight `COMPLETE` or more there (true
tokens standing once at closed positions: 0.53-0.99 on RT lr 1e-5, 0.65-0.98 on CoLA lr 1e-5, 0.76-1.02 at lr 1e-4).
Closing groups of positions linked by repeated tokens (summed rows against summed boxes) lost true
tokens at lr 1e-4 (the summed box hides a share) and is not done.
The search (`Candidates.free`) and the token repair (`update_repair.BoxRepair.options`) read these, where
the rounding is wide (`UpdateExact._repairs_decide`). End to end, side by side with main (MiniLM dev batch 0
of 4, K 8, budget 400; `recipes/measured/batch_placement_s19`): ROUGE-1 SST-2 lr 1e-4 0.426 against 0.333,
RT lr 1e-4 0.279 against 0.148, CoLA lr 1e-5 0.704 against 0.283, CoLA lr 1e-4 exact and certified in 61
against 117 CPU s; RT batch 8, K 4, lr 1e-3 (narrow rounding) lost, 0.567 against 0.735: not applied there.

Ranked (session 20, option `row_ranking`): each position's allowed tokens are ordered by their weight in A
(`RankedPositions.order`, placed tokens first). Ground truth (MiniLM, K 8, dev batch 0 of 4): the repair's
layer-0 ranking left the true token out of its 16 tries at 8 of the 42 inner positions of SST-2's 44-token
sentence at lr 1e-4; this order at none (rank 12 at most; CoLA lr 1e-5: 3). The repairs (`update_repair`) try
tokens in this order, start from the batch it fills (`ranked_fill`, `ranked_start`) where that one's box misfit
is below the search's guess's (at lr 1e-4 and below its guesses hold a few tokens many times; the fill left 0
of 68, 0 of 27 and 4 of 68 out), and keep every token whose word row moved in the batch. Where the box is over
`BOX_LIMIT` (SST-2 dev batch 0 at lr 1e-5: 0.503, where nothing was placed and layer 0 is all rounding: ROUGE-1
0.11-0.125) but within `SOFT_LIMIT`, the order alone is read (`RankedPositions.soft`: every token allowed
everywhere, 85 of 87 true tokens among the first 16), by the repairs only.

Slot assignment (session 21, option `slot_assignment`): the fill keeps [CLS] and [SEP] out of inner positions and
`update_slots` hands each shared position's tokens to its sentences by a bigram prior and the word rows' likeness,
one batch per weight; `ranked_start` keeps whichever of the search's guess, the fill and those batches has the least
box misfit. End to end (MiniLM, K 8, dev batch 0 of 4, budget 400, side by side with the option off; both at load
~10): ROUGE-1 0.953 against 0.430 on SST-2 at lr 1e-4, 0.983 against 0.484 on CoLA at lr 1e-5
(`recipes/measured/fedavg_b4_small_lr_s21`).

Threat model: as `attacks.update` (U, w0, K, lr, the declared lengths; embedding rows shared).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

import torch

from ..text.layouts import Layout
from ..text.leaks.positions import TokenPositions
from ..text.leaks.tokens import embedding_token_set
from ..threat import Observation
from ..training import TrainingSettings
from .update_positions import EmbeddingRows, box_excess
from .update_repair import missing

#: a token is placed where its column of the least-squares split reaches this, and nowhere else does
TOP = 0.5
#: a position closes where its row's excess over the box, after its placed tokens' rows come off, is at
#: most this share of the row (batch 1: true pairs at 0, wrong ones from 0.33; `update_positions`)
THRESHOLD = 1e-3
#: nothing is placed where the position rows' median box half-width is over this share of their norm
#: (MiniLM, K 8, batch 4: CoLA lr 1e-5 at 0.23 kept every true token; lr 1e-6 at 2.8 lost 8 of 36)
BOX_LIMIT = 0.5
#: with `strict`: a token placed at a closed position is complete (stands nowhere else) only at this weight there or
#: more (the module doc: "," at 0.503 stood elsewhere too)
COMPLETE = 0.6
#: ... but up to this share the ranking alone is read (`RankedPositions.soft`): SST-2 dev batch 0 of 4, K 8,
#: lr 1e-5 (box 0.503): every true token allowed, 85 of 87 among the first 16 of its position's ranking
SOFT_LIMIT = 1.0
#: the fill's labels are chosen among every assignment where there are at most this many, else by flipping one
#: sentence's label at a time from the search's while the misfit falls (`least_labels`): CoLA dev batch 0 of 4 at lr
#: 1e-5, the fill's misfit 0.053 with the search's labels (one wrong), 0.0086 with the true ones. At batch 8 the
#: 256 assignments x 6 batches took 232 of a 435 s run (RT dev batch 0, K 8, lr 1e-4, budget 400, load 4.3,
#: cProfile), leaving the repairs after it no time
LABEL_CHOICES = 16


@dataclass
class RankedPositions(TokenPositions):
    """`TokenPositions` with `order`: per position, its allowed tokens by their least-squares weight there
    (the column of A, highest first; placed tokens first). The token repair (`update_repair.BoxRepair.options`)
    tries them in this order."""

    order: list[list[int]] | None = None
    #: a ranking alone (the box over `BOX_LIMIT`): every token allowed everywhere, nothing placed; the repairs
    #: read its order, the search nothing
    soft: bool = False
    #: token id -> its word row (U's, unit length), for `update_slots.row_links`
    rows: dict[int, torch.Tensor] | None = None


def batch_placement_reason(attack: Any, observation: Observation, layout: Layout) -> str | None:
    """Why the placements do not apply (None: they do): the option `batch_placement` off, not
    classification, undeclared lengths, per-layer clipping, reduced precision or left padding, no
    position-embedding rows or no sparse word-embedding rows shared."""
    know, settings = observation.knowledge, TrainingSettings.of(observation.metadata)
    return "option batch_placement off" if not getattr(attack, "batch_placement", False) else \
        "classification only" if observation.task != "classify" else \
        "declared lengths only" if know.seq_lengths is None else \
        "training settings (per-layer clipping, reduced precision or left padding)" \
        if settings.per_layer_norm or settings.reduced_precision or settings.padding.get("side") == "left" else \
        "no position-embedding rows shared" if layout.position_embedding_name not in observation.gradients else \
        "no sparse word-embedding rows shared" if embedding_token_set(layout, observation.gradients) is None else None


def pins_for(attack: Any, observation: Observation, layout: Layout, facts: Any, wide: Callable[[], bool]
             ) -> tuple[TokenPositions | None, dict[str, Any]]:
    """`batch_positions` for the update in `observation` (layout: the model at w0), or (None, why not):
    `batch_placement_reason`, or the rounding narrow (`wide()` False, asked last: the span search certifies
    alone there; on RT dev batch 0 of 8, K 4, lr 1e-3 the placements lost, 0.567 against 0.735)."""
    why = batch_placement_reason(attack, observation, layout) or (
        None if wide() else "the rounding is narrow (the search certifies alone)")
    if why:
        return None, {"reason": why}
    tokens = embedding_token_set(layout, observation.gradients).tolist()
    return batch_positions(layout, observation.gradients, facts.lr, facts.steps, tokens,
                           observation.knowledge.seq_lengths, soft=bool(getattr(attack, "row_ranking", False)),
                           strict=bool(getattr(attack, "strict_closure", False)))


def batch_positions(layout: Layout, update: Mapping[str, torch.Tensor], lr: float, steps: int,
                    tokens: Sequence[int], lengths: Sequence[int], soft: bool = False, strict: bool = False
                    ) -> tuple[TokenPositions | None, dict[str, Any]]:
    """The placements of the module doc over positions 0..max(lengths)-1, and a report (placed tokens, closed
    positions, the largest misfit closed and the least left open, the box's median share of the position
    rows). Where the box is wider than `BOX_LIMIT`: None, or with `soft` and the box within `SOFT_LIMIT`, a
    `RankedPositions` ranking alone (`soft`). `strict`: the module doc's strict closure."""
    rows = EmbeddingRows(layout, update, lr, steps, tokens, max(lengths))
    toks, L = rows.tokens, rows.length
    box = float((rows.P_half.norm(dim=1) / rows.P.norm(dim=1).clamp_min(1e-300)).median())
    why = f"the rounding box is {box:.3g} of the position rows (over {BOX_LIMIT:g})"
    if box > (SOFT_LIMIT if soft else BOX_LIMIT):
        return None, {"reason": why}
    A = torch.linalg.lstsq(rows.W.T, rows.P.T).solution.T  # [L, tokens]: P ~ A W
    if box > BOX_LIMIT:
        order = [[toks[i] for i in A[p].argsort(descending=True).tolist()] for p in range(L)]
        return RankedPositions([set(toks) for _ in range(L)], {}, set(), set(), THRESHOLD, order, soft=True,
                               rows=_unit_rows(rows)), \
            {"reason": why, "ranking_only": True, "box": box, "tokens": len(toks), "positions": L}
    top = A.topk(min(2, L), dim=0)
    second = top.values[1] if L > 1 else torch.full_like(top.values[0], -float("inf"))
    placed: dict[int, set[int]] = {}
    here: list[list[int]] = [[] for _ in range(L)]
    for i, t in enumerate(toks):
        if float(top.values[0, i]) >= TOP and float(second[i]) < TOP:
            placed[t] = {int(top.indices[0, i])}
            here[int(top.indices[0, i])].append(i)
    closed, complete, misfits = set(), set(), []
    occupants = [sum(n > p for n in lengths) for p in range(L)]
    for p in range(L):
        if here[p] and len(here[p]) <= occupants[p]:
            misfits.append(_misfit(rows, p, here[p]))
            if misfits[-1] <= THRESHOLD and (not strict or len(here[p]) == occupants[p] or p == 0):
                closed.add(p)
                complete |= {toks[i] for i in here[p] if not strict or float(A[p, i]) >= COMPLETE}
    loose = {t for t in toks if t not in complete}
    allowed = [{toks[i] for i in here[p]} | (set() if p in closed else loose) for p in range(L)]
    weight = {t: A[:, i].tolist() for i, t in enumerate(toks)}
    order = [sorted(allowed[p], key=lambda t: (p not in placed.get(t, ()), -weight[t][p])) for p in range(L)]
    pins = RankedPositions(allowed, placed, complete, closed, THRESHOLD, order, rows=_unit_rows(rows))
    report = {"tokens": len(toks), "placed": len(placed), "closed_positions": len(closed), "positions": L,
              "complete": len(complete), "box": box,
              "misfit_closed_max": max([m for m in misfits if m <= THRESHOLD], default=None),
              "misfit_open_min": min([m for m in misfits if m > THRESHOLD], default=None)}
    return pins, report


def _unit_rows(rows: EmbeddingRows) -> dict[int, torch.Tensor]:
    """Each token's word row of U at unit length."""
    unit = torch.nn.functional.normalize(rows.W, dim=1).cpu()
    return {t: unit[i] for i, t in enumerate(rows.tokens)}


def ranked_fill(sequences: Sequence[Sequence[int]], order: Sequence[Sequence[int]],
                special: Collection[int] = ()) -> list[list[int]]:
    """The batch `sequences` (their lengths and ends kept) filled at each inner position from `order` (a
    `RankedPositions`' ranking, less the `special` ids: [CLS] and [SEP] stand only at the ends): the slots
    standing there take its first tokens in turn, distinct while the ranking lasts (the longest slot first: past
    the second-longest length it stands there alone, and the first-ranked token is its own wherever that token
    stands once)."""
    seqs = [list(s) for s in sequences]
    slots = sorted(range(len(seqs)), key=lambda b: -len(seqs[b]))
    skip = set(special)
    order = [[t for t in row if t not in skip] for row in order] if skip else order
    for p in range(1, max((len(s) for s in seqs), default=0)):
        if p >= len(order) or not order[p]:
            continue
        standing = [b for b in slots if p < len(seqs[b]) - 1]
        for k, b in enumerate(standing):
            seqs[b][p] = order[p][min(k, len(order[p]) - 1)]
    return seqs


class BatchMisfit:
    """The box misfit (`repair.misfit`, `update_repair.BoxRepair`) of a batch under its labels, each (sentence,
    label)'s gradient computed once; `classes`: the model's label count. One serves `ranked_start` and the stages
    after it (`update_cls.cls_start`), which weigh the same batches again."""

    def __init__(self, repair: Any):
        self.repair, self.grads = repair, {}
        self.classes = int(getattr(getattr(repair.layout.model, "config", None), "num_labels", 2) or 2)

    def __call__(self, seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
        for s, y in zip(seqs, labels):
            if (tuple(s), int(y)) not in self.grads:
                self.grads[tuple(s), int(y)] = self.repair.gradient(s, y)
        return self.repair.misfit(sum(self.grads[tuple(s), int(y)] for s, y in zip(seqs, labels)) / len(seqs))


def ranked_start(repair: Any, pred: dict, order: Sequence[Sequence[int]], special: Collection[int] = (),
                 assign: Callable[[list[list[int]]], dict[str, list[list[int]]]] | None = None,
                 misfit: BatchMisfit | None = None, batches_out: dict | None = None) -> dict[str, Any]:
    """The guess `pred` (token ids, labels) replaced by the batch `ranked_fill` makes of it, or by one that
    `assign` makes of the fill (named batches: `update_slots.assigned`), each with its labels of least misfit,
    where that one's box misfit (`update_repair.BoxRepair`) is the least; a report (each one's misfit and the
    update's tokens it leaves out, `missing`, and which was kept). The fill alone scored ROUGE-1 0.436 on SST-2 at
    lr 1e-4, 0.515 on CoLA at lr 1e-5, 0.267 on SST-2 at lr 1e-5 (MiniLM dev batch 0 of 4, K 8; ground truth in
    scratch). Taking it wherever it left fewer tokens out lost SST-2 dev batch 1 at lr 1e-4 (0.324 against 0.581:
    the search had one sentence exact, misfit 0.010 against the fill's 0.023). `batches_out`, where given, gets
    every batch weighed: name -> (token ids, labels, misfit)."""
    filled = ranked_fill(pred["token_ids"], order, special)
    misfit = misfit if misfit is not None else BatchMisfit(repair)
    batches = {"search": ([list(s) for s in pred["token_ids"]], list(pred["labels"])), "filled": (filled, None)}
    for name, batch in (assign(filled) if assign is not None else {}).items():
        batches.setdefault(name, (batch, None))
    keys = {}
    for name, (batch, labels) in batches.items():
        if labels is None:  # its labels: those of least misfit
            starts = [list(pred["labels"])] + [list(ys) for _, ys in batches.values() if ys is not None]
            batches[name] = batch, labels = batch, least_labels(batch, starts, misfit.classes, misfit)
        keys[name] = (misfit(batch, labels), missing(batch, repair.cover))
    kept = min(keys, key=lambda name: keys[name])  # the search's guess on a tie
    if batches_out is not None:
        batches_out.update({name: (*batches[name], keys[name][0]) for name in batches})
    pred["token_ids"], pred["labels"] = batches[kept]
    return {**{name: list(key) for name, key in keys.items()}, "kept": kept}


def least_labels(batch: Sequence[Sequence[int]], starts: list[list[int]], classes: int,
                 misfit: Callable[[Sequence[Sequence[int]], Sequence[int]], float]) -> list[int]:
    """The labels of least `misfit` for `batch`: among every assignment (and `starts`) where there are at most
    LABEL_CHOICES, else from each of `starts` (the search's labels, those chosen for the batches before), one
    sentence's label changed at a time while the misfit falls, the least of these."""
    if classes ** len(batch) <= LABEL_CHOICES:
        choices = starts[:1] + [list(c) for c in itertools.product(range(classes), repeat=len(batch))]
        return min(choices, key=lambda ys: misfit(batch, ys))
    found = []
    for start in {tuple(ys): None for ys in starts}:
        best, score = list(start), misfit(batch, start)
        improved = True
        while improved:
            improved = False
            for i, y in itertools.product(range(len(batch)), range(classes)):
                if y == best[i]:
                    continue
                trial = best[:i] + [y] + best[i + 1:]
                value = misfit(batch, trial)
                if value < score:
                    best, score, improved = trial, value, True
        found.append((score, best))
    return min(found)[1]


def _misfit(rows: EmbeddingRows, p: int, tokens: Sequence[int]) -> float:
    """Position p's row less the summed word rows of `tokens` (indices): the box's excess over the row's norm."""
    i = list(tokens)
    return float(box_excess(rows.P[p] - rows.W[i].sum(0), rows.P_half[p] + rows.W_half[i].sum(0),
                            rows.P[p].norm().clamp_min(1e-300)))
