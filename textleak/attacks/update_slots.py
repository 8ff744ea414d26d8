"""Which sentence holds which token, where several sentences share a position (`exact-update`, batch > 1).

The batch placements (`update_batch_positions`) read from the update's embedding rows which tokens stand at
each position, but not in which sentence: at a position that k sentences share, the ranked fill (`ranked_fill`)
hands its k tokens out in the ranking's order, blind to the sentences. Ground truth (session 21, scratch; MiniLM,
K 8, dev batch 0 of 4): with the fill's own tokens at each position, setting only their sentences right takes it
from 50 to 90 of 95 tokens on SST-2 at lr 1e-4 and from 23 to 35 of 36 on CoLA at lr 1e-5 (its [CLS] and [SEP]
kept out of inner positions, where the ranking put them at the ends of shorter sentences).

Two signals link neighbours: a language prior (the bigram of the training splits, `text.prior`: a token at p
and one at p + 1 stand in one sentence with the prior's probability of the second after the first, and a
sentence ends after a token with that of [SEP]) and the update's own word rows (neighbours in one sentence share
much of their embedding gradients: `row_links`). With links between neighbours only, the most linked assignment
of the whole batch splits into one assignment problem per pair of neighbouring positions (the k tokens at p to
the k' <= k at p + 1 or to an end, solved exactly by `scipy.optimize.linear_sum_assignment`); the sentences are
the paths through them, and the paths that end at p go to the slots whose length ends there (same-length slots
are interchangeable). One wrong link swaps two sentences' tails, and no one weight of the rows against the prior
won in every batch measured (`WEIGHTS`), so each weight proposes a batch and `update_batch_positions.ranked_start`
keeps the one of least box misfit: ground truth (scratch, as above), it kept 89 of 95 tokens right on SST-2 batch
0 at lr 1e-4 (the fill 50), 72 of 123 on RT batch 0 at lr 1e-4 (43), 33 of 46 on CoLA batch 1 at lr 1e-5 (16);
on SST-2 batch 1 at lr 1e-4 it kept 33 of 67 where another weight had 47 (the fill 27). From CoLA batch 0 at
lr 1e-5 (35 of 36 kept) the token repair (`update_repair`) reached the true batch (misfit 0). The box misfit's
exchanges (`update_repair.BoxRepair._exchange`, one sentence pair at one position or their heads) moved the kept
batches little: 89 -> 88 on SST-2 batch 0, 72 -> 70 on RT batch 0, 33 -> 34 on CoLA batch 1 (at 9-36 CPU s a
pass).

Threat model: as `attacks.update`; the prior (`text.prior.BigramPrior`) is fitted on the training splits only,
never on the sentences under attack (LAMP's term, which `auto` already runs).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..core import budget
from ..errors import InputError, MissingKnowledgeError
from ..text.layouts import layout_for
from ..text.prior import load_prior


def assign_slots(sequences: Sequence[Sequence[int]], link: Callable[[int, int], float], end: int
                 ) -> list[list[int]]:
    """The batch `sequences` (lengths, [CLS] and [SEP] kept) with the tokens at each inner position handed to
    the sentences standing there by the paths of most summed `link` (see the module doc). `link(v, w)`: how
    likely w follows v in one sentence (a log-probability; with `end`, the [SEP] id, the sentence ends after v).
    The tokens at each position stay those of `sequences`."""
    seqs = [list(s) for s in sequences]
    if len(seqs) < 2:
        return seqs
    inner = [len(s) - 2 for s in seqs]  # inner positions 1..inner[b]
    top = max(inner, default=0)
    if top < 1:
        return seqs
    standing = [[b for b in range(len(seqs)) if inner[b] >= p] for p in range(top + 1)]
    tokens = {p: [seqs[b][p] for b in standing[p]] for p in range(1, top + 1)}
    # paths[i]: the tokens of the i-th path so far; at[p]: which path holds each token of position p
    paths: list[list[int]] = [[t] for t in tokens[1]]
    holder = list(range(len(paths)))
    ended: dict[int, list[int]] = {}  # last inner position -> paths ending there
    for p in range(1, top + 1):
        here = tokens[p]
        nxt = tokens.get(p + 1, [])
        ends = len(here) - len(nxt)
        cost = np.zeros((len(here), len(nxt) + ends))
        for i, v in enumerate(here):
            for j, w in enumerate(nxt):
                cost[i, j] = -link(v, w)
            cost[i, len(nxt):] = -link(v, end)
        rows, cols = linear_sum_assignment(cost)
        follow = [None] * len(nxt)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if j < len(nxt):
                paths[holder[i]].append(nxt[j])
                follow[j] = holder[i]
            else:
                ended.setdefault(p, []).append(holder[i])
        holder = [h for h in follow if h is not None]
    for p, ids in ended.items():
        slots = [b for b in range(len(seqs)) if inner[b] == p]
        for b, i in zip(slots, ids):
            seqs[b][1:p + 1] = paths[i]
    return seqs


#: the weights of the word rows' cosine against the bigram log-probability, one assignment each: ground truth
#: (session 21, scratch; MiniLM, K 8, dev batches of 4) gave the most tokens right at 3 on SST-2 batch 0 at
#: lr 1e-4 (89 of 95; 0: 41), at 0-1 on its batch 1 and RT batches 0-1 (RT batch 0: 72 of 123 at 1; 43 filled),
#: at 10 on CoLA batch 1 at lr 1e-5 and batch 2 at lr 1e-4; no one weight won everywhere, so each proposes
WEIGHTS = (0.0, 1.0, 3.0, 10.0)
#: with `exact-update`'s `slots_first`: the share of the budget its repairs get before the search (its option
#: `first_share`); 1: the whole budget, the search gets what they leave (the token repair stops early where a sweep
#: changes nothing). At lr <= 1e-4 the search's guess was never kept (session 23) while the token repair ran out
#: after 1-3 sweeps at 0.5. MiniLM K 8 batch 4 lr 1e-5, 1 against 0.5 side by side (`fedavg_small_lr_s24`):
#: RT dev batch 0 (800 CPU s, load 5.9) ROUGE-1 0.600 against 0.557 (4 token-repair sweeps against 2, box misfit
#: 8.2e-4 against 1.1e-3); SST-2 dev batch 1 (600 CPU s, load 4.0) 0.981 / EM 0.75 against 0.915 / 0.25 (6 sweeps
#: to no change, 3.7e-5, against 4 that ran out, 1.4e-4); RT dev batch 0 of 8, lr 1e-4 (400 CPU s, load 4.0) a
#: tie on ROUGE-1, 0.501 against 0.509, where the misfit fell further (1.3e-3 against 2.1e-3) and the one sentence
#: exact at 0.5 was lost
FIRST_SHARE = 1.0


def row_links(rows: Mapping[int, torch.Tensor] | None, logp: Callable[[int, int], float] | None, end: int,
              weight: float) -> Callable[[int, int], float]:
    """`assign_slots`' link: log p(w | v) under the prior (`logp`; 0 without one) plus `weight` x the cosine of
    v's and w's word rows of U (`rows`, unit length; 0 where either is missing or w is `end`). Neighbours in one
    sentence share much of their embedding gradients (attention): the true successor's row was the most similar
    of those at the next position for 19 of 23 unrepeated tokens on RT dev batch 0 of 4 at lr 1e-4 (the bigram's
    favourite for 17), 9 of 14 on CoLA batch 0 at lr 1e-5 (the bigram's 11)."""
    def link(v: int, w: int) -> float:
        near = float(rows[v] @ rows[w]) if rows is not None and w != end and v in rows and w in rows else 0.0
        return (logp(v, w) if logp is not None else 0.0) + weight * near
    return link


def assigned(rows: Mapping[int, torch.Tensor] | None, logp: Callable[[int, int], float] | None, end: int,
             weights: Sequence[float] = WEIGHTS) -> Callable[[list[list[int]]], dict[str, list[list[int]]]]:
    """For `update_batch_positions.ranked_start`: the fill reassigned once per cosine weight (`row_links`)."""
    def make(filled: list[list[int]]) -> dict[str, list[list[int]]]:
        return {f"assigned_{w:g}": assign_slots(filled, row_links(rows, logp, end, w), end) for w in weights}
    return make


def slot_starts(pins: Any, tokenizer: Any, on: bool) -> tuple[set[int], Any]:
    """`update_batch_positions.ranked_start`'s special ids and slot assignments (`assigned`: the bigram prior of
    the training splits, or the word rows alone where there are none) where `on` (`exact-update`'s option
    `slot_assignment`); else nothing (the ranked fill alone, as before)."""
    end = getattr(tokenizer, "sep_token_id", None)
    if not on or end is None:
        return set(), None
    try:
        logp = load_prior("bigram", tokenizer).logp
    except InputError:
        logp = None
    return {tokenizer.cls_token_id, end} - {None}, assigned(getattr(pins, "rows", None), logp, end)


def slots_first(attack: Any, observation: Any, target: Any, moved: Any, facts: Any) -> Any:
    """`exact-update`'s option `slots_first` (batch > 1, where the rounding is wide and the batch placements rank
    every position): its repairs (`UpdateExact._repair`: the ranked fill and its slot assignments, then the token
    repair) before any search, within `FIRST_SHARE` of the budget (`exact-update`'s option `first_share`), certified by the replay; the output, or None
    where they do not apply. At lr 1e-4 and below the search's guesses hold 2-12 tokens of a sentence right
    (session 20) while the kept assignments held 49-94% of the tokens at their places (the module doc), and at
    high load the search overran its share so that the repairs after it never ran. Side by side with it off
    (MiniLM, K 8, dev batch 0 of 4, budget 400, load 8-15; `recipes/measured/fedavg_b4_small_lr_s21`): ROUGE-1
    0.585 against 0.244 on RT at lr 1e-4, 0.397 against 0.122 on SST-2 at lr 1e-5, 0.953 both on SST-2 at lr 1e-4,
    0.956 against 0.972 and 0.956 both on CoLA at lr 1e-5."""
    from .base import AttackOutput
    from .exact.attack import _predict

    lengths = observation.knowledge.seq_lengths
    if not attack.slot_assignment or not lengths or len(lengths) < 2 or not attack._repairs_decide(observation) \
            or attack._fits_for(observation.gradients) is None:
        return None
    pins = attack._batch_pins(observation, layout_for(target.model), facts)
    if getattr(pins, "order", None) is None:
        return None
    tok = target.tokenizer
    blank = [[tok.cls_token_id] + [tok.sep_token_id] * (n - 1) for n in lengths]  # the fill replaces it
    assumed = {"special_tokens": bool(observation.knowledge.special_tokens), "seq_lengths": "known"}
    out = AttackOutput(prediction=_predict(observation, layout_for(moved.model), tok, blank, assumed),
                       method=attack.name, assumed=assumed, config=attack.options(), details={"certified": False})
    attack._widen = 1.0
    with budget.time_budget(budget.share_of_remaining(getattr(attack, "first_share", FIRST_SHARE))):
        try:
            attack._repair(observation, target, moved, facts, out, {})
        except MissingKnowledgeError:
            return None
    out.details["slots_first"] = True
    return out
