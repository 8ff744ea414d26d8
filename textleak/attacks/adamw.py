"""`exact-adamw`: what a FedAvg client's AdamW update gives away, and the batch read from it.

The update is K local AdamW steps (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
ICLR 2019; PyTorch's defaults, a fresh optimiser state per round) shared as
U = (w0 - wK) / (lr K) (McMahan et al. 2017). Adam's step m / (sqrt(v) + eps) is not linear in
the gradient (the first step is g / (|g| + eps), about sign(g)), so the span tests of DAGER
(Petrov et al., NeurIPS 2024) that `exact-update` uses do not separate true sentences from false
ones (measured in session 9 against the truth: layer-0 residuals of true and false tokens overlap). What
still leaks, read here without any search:

- the token set: a word-embedding row takes an Adam step only where its token was in the batch
  (m = v = 0 elsewhere). Weight decay moves every row by a known factor, c = 1 - lr wd per step;
  the server knows w0, lr, wd and K, so it subtracts w0 (1 - c^K) / (lr K) first (`adam_part`);
- the positions: a position row moves only where some sentence reaches (the longest length);
- each token's position(s): the gradient reaching word row t and position row p is the same
  vector wherever token t alone stands at p (batch 1, token used once: their Adam states, and so
  their steps, are equal at every step, weight decay aside). In a batch, position p's row sums
  every sentence's gradient there and only a tendency remains (cosine ranking);
- the labels: the classifier bias moves against the true class (batch 1); in a batch, only the
  majority direction, so labels are chosen by replaying the steps.

The sentences: batch 1 is ordered by matching rows (exactly when no token repeats; a repeated
token's row mixes its positions and fills the positions no single token matches); a batch of B
places tokens by position (an assignment on the cosines) and groups them into sentences by local
search (swapping two tokens of one position between sentences), scored by replaying the client's
K steps on the guess (`update_sim`). The certificate is that replay matching U to its rounding.

Threat model: honest-but-curious server knowing w0, K, lr, weight decay, mini-batch size (the FL
configuration, recorded with the update) and the declared knowledge (lengths, special tokens).
Arguments: `sweeps` (local-search passes), `seed`. Classification with an untied head only (a
tied masked-LM head writes to every word row). Shapes: the update is keyed by parameter name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from ..core import budget
from ..errors import MissingKnowledgeError
from ..text.decode import ids_to_text
from ..text.layouts import Layout, layout_for
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .update_sim import UpdateFacts, certify_batch, shares_update, simulation_mismatch, update_facts


def adam_part(layout: Layout, update: Mapping[str, torch.Tensor], name: str, facts: UpdateFacts) -> torch.Tensor:
    """(1/K) sum_k c^(K-1-k) a_k of parameter `name`: its update without the weight decay's share
    w0 (1 - c^K) / (lr K), c = 1 - lr wd (exactly the update when wd = 0), in float64."""
    u = update[name].double()
    if not facts.weight_decay:
        return u
    w0 = dict(layout.model.named_parameters())[name].detach().double().to(u.device)
    c = 1.0 - facts.lr * facts.weight_decay
    return u - w0 * (1.0 - c ** facts.steps) / (facts.lr * facts.steps)


def moved_rows(rows: torch.Tensor, facts: UpdateFacts) -> list[int]:
    """Rows that took an Adam step: exactly nonzero without weight decay; with it, rows whose
    remainder clears the float32 rounding of the decay's share (1e-3 of the largest row)."""
    size = rows.abs().amax(1)
    floor = 0.0 if not facts.weight_decay else 1e-3 * float(size.max())
    return (size > floor).nonzero().flatten().tolist()


@dataclass(frozen=True)
class AdamLeaks:
    """What the update shows without a search: tokens, positions, row cosines [tokens, positions], labels."""

    tokens: list[int]
    positions: int
    cosines: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def read(cls, layout: Layout, update: Mapping[str, torch.Tensor], facts: UpdateFacts) -> "AdamLeaks":
        words = adam_part(layout, update, layout.word_embedding_name, facts)
        pos = adam_part(layout, update, layout.position_embedding_name, facts)
        tokens, positions = moved_rows(words, facts), moved_rows(pos, facts)
        if not tokens or not positions:
            raise MissingKnowledgeError("the AdamW update moves no word or position embedding row")
        n = max(positions) + 1
        cos = torch.nn.functional.normalize(words[tokens], dim=1) @ torch.nn.functional.normalize(pos[:n], dim=1).T
        head = layout.classifier()
        bias = adam_part(layout, update, head.bias, facts) if head.bias in update else None
        return cls(tokens, n, cos, bias)


@ATTACKS.register("exact-adamw")
@dataclass
class AdamWExact:
    name: ClassVar[str] = "exact-adamw"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    sweeps: int = 3
    seed: int = 0

    def preflight(self, observation: Observation, target: Any) -> None:
        if not shares_update(observation):
            raise MissingKnowledgeError("exact-adamw reads a FedAvg AdamW update; this file shares a gradient")
        facts = update_facts(observation.metadata)
        if facts.optimizer != "adamw":
            raise MissingKnowledgeError(f"exact-adamw reads AdamW updates; this one was made with {facts.optimizer}")
        layout = layout_for(target.model)
        if observation.task != "classify" or layout.tied:
            raise MissingKnowledgeError("exact-adamw reads classifiers with an untied head (a tied masked-LM head "
                                        "moves every word row)")
        layout.require(observation.gradients, [layout.word_embedding_name, layout.position_embedding_name],
                       "exact-adamw")

    def run(self, observation: Observation, target: Any, **_: Any) -> AttackOutput:
        self.preflight(observation, target)
        t0 = time.perf_counter()
        facts, layout, tok = update_facts(observation.metadata), layout_for(target.model), target.tokenizer
        leaks = AdamLeaks.read(layout, observation.gradients, facts)
        lengths, assumed = self._lengths(observation, leaks)
        placed = place_tokens(leaks, lengths)
        labels = self._labels(observation, leaks, lengths)
        guess = Grouping(layout, observation.gradients, facts, placed, lengths, labels)
        guess.search(self.sweeps)
        check, labels = certify_batch(layout, observation.gradients, guess.sequences(), guess.labels, facts)
        if observation.knowledge.labels is not None:
            labels = [int(y) for y in observation.knowledge.labels]
        assumed.update(update="local steps, learning rate and weight decay from the file",
                       labels="known" if observation.knowledge.labels is not None else
                       "the classifier bias's step (batch 1), else the closest replay")
        sequences = guess.sequences()
        prediction = {"token_ids": sequences, "labels": labels, "texts": [ids_to_text(tok, s) for s in sequences]}
        details = {"certified": check["certified"], "simulation": check, "token_set": len(leaks.tokens),
                   "longest_length": leaks.positions, "pinned_tokens": int((leaks.cosines.amax(1) > 1 - 1e-6).sum()),
                   "search_mismatch": guess.best, "moves_tried": guess.tried, "seconds": time.perf_counter() - t0,
                   "update": {"local_steps": facts.steps, "local_lr": facts.lr, "weight_decay": facts.weight_decay,
                              "minibatch": facts.minibatch}}
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"sweeps": self.sweeps, "seed": self.seed}, details=details)

    @staticmethod
    def _lengths(observation: Observation, leaks: AdamLeaks) -> tuple[list[int], dict[str, Any]]:
        know = observation.knowledge
        if know.seq_lengths is not None:
            return [int(n) for n in know.seq_lengths], {"seq_lengths": "known"}
        size = know.batch_size or 1
        return [leaks.positions] * size, {"seq_lengths": "every sentence as long as the longest (position rows moved)"}

    @staticmethod
    def _labels(observation: Observation, leaks: AdamLeaks, lengths: list[int]) -> list[int]:
        if observation.knowledge.labels is not None:
            return [int(y) for y in observation.knowledge.labels]
        # the bias moves against the true class (batch 1), against the majority's in a batch
        label = int(leaks.bias.argmin()) if leaks.bias is not None else 0
        return [label] * len(lengths)


def place_tokens(leaks: AdamLeaks, lengths: list[int]) -> dict[int, list[int]]:
    """Tokens at each position (as many as sentences reach it): an assignment maximising the
    word-row / position-row cosines, every moved token placed at least once. A token whose row
    equals a position's row (cosine 1: it stands alone there, used once) is pinned to it; the
    slots left over take a token again: an unpinned one (its row mixes several places), or a
    pinned one at its own position (e.g. every sentence's [CLS])."""
    from scipy.optimize import linear_sum_assignment

    slots = [p for p in range(max(lengths)) for b in range(len(lengths)) if lengths[b] > p]
    cos = leaks.cosines[:, [min(p, leaks.positions - 1) for p in slots]].numpy()
    pinned = {t: int(leaks.cosines[t].argmax()) for t in range(len(leaks.tokens))
              if float(leaks.cosines[t].max()) > 1 - 1e-6}
    again = []  # for each slot, the best token to place again there
    for j, p in enumerate(slots):
        allowed = [t for t in range(len(leaks.tokens)) if pinned.get(t, p) == p] or list(range(len(leaks.tokens)))
        again.append(max(allowed, key=lambda t: cos[t, j]))
    rows = list(range(len(leaks.tokens))) + [-1] * max(0, len(slots) - len(leaks.tokens))
    cost = [[-cos[again[j], j] if r < 0 else -cos[r, j] if pinned.get(r, p) == p else 10.0
             for j, p in enumerate(slots)] for r in rows]
    r_idx, c_idx = linear_sum_assignment(cost)
    out: dict[int, list[int]] = {p: [] for p in range(max(lengths))}
    for r, c in zip(r_idx, c_idx):
        out[slots[c]].append(leaks.tokens[again[c] if rows[r] < 0 else rows[r]])
    for p in out:  # stable order: best-matching first
        out[p].sort(key=lambda t: -float(leaks.cosines[leaks.tokens.index(t), min(p, leaks.positions - 1)]))
    return out


class Grouping:
    """Which placed token belongs to which sentence: a local search over swaps of two tokens at
    one position between sentences, scored by replaying the client's steps (`simulation_mismatch`)."""

    def __init__(self, layout: Layout, update, facts: UpdateFacts, placed: dict[int, list[int]],
                 lengths: list[int], labels: list[int]):
        self.layout, self.update, self.facts, self.lengths, self.labels = layout, update, facts, lengths, labels
        # sentences reaching position p, longest first, take its tokens in turn
        order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
        self.rows = [[0] * n for n in lengths]
        for p, toks in placed.items():
            for b, t in zip([b for b in order if lengths[b] > p], toks):
                self.rows[b][p] = t
        self.tried = 0
        self.best = math.inf

    def sequences(self) -> list[list[int]]:
        return [list(r) for r in self.rows]

    def score(self) -> float:
        self.tried += 1
        return simulation_mismatch(self.layout, self.update, self.rows, self.labels, self.facts)

    def search(self, sweeps: int) -> None:
        """Swap moves (first improvement) and, for a batch, each sentence's label flipped."""
        self.best = self.score()
        for _ in range(sweeps):
            improved = self._labels_pass()
            for p in range(max(self.lengths)):
                reach = [b for b in range(len(self.lengths)) if self.lengths[b] > p]
                for i, a in enumerate(reach):
                    for b in reach[i + 1:]:
                        if budget.expired():
                            return
                        if self.rows[a][p] != self.rows[b][p]:
                            improved |= self._try_swap(a, b, p)
            if not improved:
                return

    def _try_swap(self, a: int, b: int, p: int) -> bool:
        ra, rb = self.rows[a], self.rows[b]
        ra[p], rb[p] = rb[p], ra[p]
        s = self.score()
        if s < self.best:
            self.best = s
            return True
        ra[p], rb[p] = rb[p], ra[p]
        return False

    def _labels_pass(self) -> bool:
        improved = False
        classes = int(self.layout.model.config.num_labels)
        for b in range(len(self.labels) if len(self.labels) > 1 else 0):
            for c in range(classes):
                if c == self.labels[b]:
                    continue
                old, self.labels[b] = self.labels[b], c
                s = self.score()
                if s < self.best:
                    self.best, improved = s, True
                else:
                    self.labels[b] = old
        return improved
