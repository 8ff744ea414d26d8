"""LAMP-style attack — Balunovic, Dimitrov, Jovanovic & Vechev, "LAMP: Extracting Text from
Gradients with Language Model Priors", NeurIPS 2022.

Threat model as DLG (attacks/dlg.py); unknown labels and lengths are first recovered from the
gradient and the vocabulary narrowed to the leaked token set (attacks/textprep.py).

Method: continuous steps (Adam) on dummy embeddings [B, L, H] minimising the cosine gradient
distance plus `norm_weight` * (mean embedding norm - mean norm of the candidate rows)^2, which
keeps embeddings where real tokens live; every `discrete_every` steps a discrete step proposes
`proposals` reorderings of each sentence (swap two tokens, move one token, move a span), scores
each by gradient distance + `prior_weight` * language-prior NLL of its decoded tokens, and keeps
the best (the current order competes). The prior is pluggable (text/prior.py): "bigram" (fitted
on the training TSVs; a weak offline stand-in for LAMP's GPT-2), "hf:<causal LM in the cache>",
or "none".

Start: `initial_ids` when given (auto passes exact's assembly); otherwise, when the leaked token
set fits the free slots, each leaked token placed once in a seeded random order (`bag_start`);
otherwise random embeddings as in DLG.

Arguments: `steps`, `lr`, `restarts`, `distance`, `norm_weight`, `prior`, `prior_weight`,
`discrete_every`, `proposals`, `restrict`, `bag_start`, `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from ..core.distances import DISTANCES
from ..core.matching import MatchConfig
from ..text.prior import load_prior
from ..text.problem import TextMatchingProblem
from ..threat import Observation
from .base import ATTACKS
from .optimisation import GradientMatching, Prepared, Preparation
from .textprep import TEXT_LEAKS


class LampProblem(TextMatchingProblem):
    """TextMatchingProblem + embedding-norm regulariser + LM-guided discrete reordering."""

    def __init__(self, target, observation: Observation, *, observed: Mapping[str, torch.Tensor],
                 distance: str, norm_weight: float, prior, prior_weight: float, discrete_every: int,
                 proposals: int, seed: int, initial_ids: torch.Tensor | None = None, bag_start: bool = True,
                 **options):
        super().__init__(target, observation, **options)
        self.observed = [observed[n].detach().float().to(self.device) for n in self.names]
        self.distance = DISTANCES.get(distance)
        self.norm_weight, self.prior, self.prior_weight = norm_weight, prior, prior_weight
        self.discrete_every, self.proposals = discrete_every, proposals
        self.rng = torch.Generator().manual_seed(seed + 1)
        self.target_norm = float(self.matrix[self.candidates].norm(dim=-1).mean())
        self.initial_ids = None if initial_ids is None else initial_ids.to(self.device)
        self.bag_start = bag_start
        self.steps_seen = 0

    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        variables = super().init(generator)
        start = self.initial_ids if self.initial_ids is not None else self._bag_start(generator)
        if start is not None:
            with torch.no_grad():
                variables["embeddings"].copy_(self.matrix[start] + 0.1 * variables["embeddings"])
        return variables

    def _bag_start(self, generator: torch.Generator) -> torch.Tensor | None:
        """Every leaked token placed once, in a random order (the discrete steps then reorder),
        when the leaked set fits the free slots; spare slots repeat the first tokens (the
        strongest rows when the set came from a noisy gradient). None for a large vocabulary."""
        if not self.bag_start or len(self.candidates) > int(self.free.sum()):
            return None
        order = self.candidates[torch.randperm(len(self.candidates), generator=generator).to(self.device)]
        ids = self.fixed_ids.clone()
        slots = self.free.nonzero().tolist()
        # round-robin over sentences so each holds a share of the set when B > 1
        slots.sort(key=lambda bp: (bp[1], bp[0]))
        for k, (b, p) in enumerate(slots):
            ids[b, p] = self.candidates[k % len(self.candidates)] if k >= len(order) else order[k]
        return ids

    def state_dict(self) -> dict[str, Any]:
        """The discrete search's RNG and step count, which a checkpoint keeps (core.matching)."""
        return {"rng": self.rng.get_state(), "steps_seen": self.steps_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.set_state(state["rng"])
        self.steps_seen = int(state["steps_seen"])

    def regulariser(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        norms = variables["embeddings"][self.free].norm(dim=-1)
        return self.norm_weight * (norms.mean() - self.target_norm) ** 2

    def project(self, variables: Mapping[str, torch.Tensor]) -> None:
        self.steps_seen += 1
        if self.discrete_every and self.steps_seen % self.discrete_every == 0:
            self.discrete_step(variables)

    def _score(self, variables: Mapping[str, torch.Tensor], b: int) -> float:
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss(variables), self.params)
        rec = float(self.distance(grads, self.observed))
        with torch.no_grad():
            emb = self.inputs_embeds(variables)[b]
            ids = self.fixed_ids[b].clone()
            ids[self.free[b]] = self.nearest(emb[self.free[b]])
        return rec + self.prior_weight * self.prior.nll(ids[: self.lengths[b]].tolist())

    def discrete_step(self, variables: Mapping[str, torch.Tensor]) -> None:
        emb = variables["embeddings"]
        for b in range(self.batch_size):
            free = self.free[b].nonzero().flatten()
            n = len(free)
            if n < 2:
                continue
            base = emb.detach().clone()
            best, best_order = self._score({**variables, "embeddings": base}, b), None
            for _ in range(self.proposals):
                order = self._propose(n).to(self.device)
                trial = base.clone()
                trial[b, free] = base[b, free[order]]
                score = self._score({**variables, "embeddings": trial}, b)
                if score < best:
                    best, best_order = score, order
            if best_order is not None:
                with torch.no_grad():
                    emb[b, free] = base[b, free[best_order]]

    def _propose(self, n: int) -> torch.Tensor:
        order = torch.arange(n)
        kind = int(torch.randint(3, (1,), generator=self.rng))
        i, j = sorted(torch.randint(n, (2,), generator=self.rng).tolist())
        if i == j:
            j = min(n - 1, i + 1) if i < n - 1 else i - 1
            i, j = sorted((i, j))
        if kind == 0:  # swap two tokens
            order[i], order[j] = order[j].clone(), order[i].clone()
        elif kind == 1:  # move one token
            rest = torch.cat([order[:i], order[i + 1:]])
            order = torch.cat([rest[:j], order[i:i + 1], rest[j:]])
        else:  # move the span [i, j] to the front or the back
            span, rest = order[i:j + 1], torch.cat([order[:i], order[j + 1:]])
            order = torch.cat([span, rest]) if i > 0 else torch.cat([rest, span])
        return order


@ATTACKS.register("lamp")
@dataclass
class LAMP(GradientMatching):
    """A preset of the optimisation template (attacks/optimisation.py): text leaks first, then
    `LampProblem` (norm regulariser, discrete reordering under a language prior)."""

    name: ClassVar[str] = "lamp"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {
        "text": MatchConfig(optimizer="adam", lr=0.01, steps=100, distance="cosine", lr_decay=True,
                            checkpoint_every=0, snapshot_at=(0, 25, 50, 100)),
    }
    PREPARE: ClassVar[dict[str, Preparation]] = {"text": TEXT_LEAKS}

    decode: str = "cosine"
    norm_weight: float = 1.0
    prior: str = "bigram"
    prior_weight: float = 0.05
    discrete_every: int = 25
    proposals: int = 20
    restrict: bool = True
    initial_ids: Any = None  # [B, L] token ids to start from (auto passes exact's assembly)
    bag_start: bool = True  # without initial_ids, start from the leaked token set when it fits

    def make_problem(self, prepared: Prepared, target: Any, config: MatchConfig) -> LampProblem:
        init = torch.as_tensor(self.initial_ids) if self.initial_ids is not None else None
        obs = prepared.observation
        return LampProblem(target, obs, observed=obs.gradients, distance=config.distance,
                           norm_weight=self.norm_weight, prior=load_prior(self.prior, target.tokenizer),
                           prior_weight=self.prior_weight, discrete_every=self.discrete_every,
                           proposals=self.proposals, seed=self.seed, initial_ids=init, bag_start=self.bag_start,
                           decode_metric=self.decode, **prepared.options)

    def settings(self, problem: LampProblem) -> dict[str, Any]:
        return {"norm_weight": self.norm_weight, "prior": problem.prior.name, "prior_weight": self.prior_weight,
                "discrete_every": self.discrete_every, "proposals": self.proposals, "bag_start": self.bag_start}
