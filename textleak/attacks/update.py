"""Exact recovery from a FedAvg client update: K local SGD steps shared as a weight difference
(McMahan et al. 2017), read the way DAGER (Petrov et al., NeurIPS 2024, Sec. 5) reads it, as the
average gradient along the client's trajectory.

Threat model: honest-but-curious server. It sees U = (w0 - wK) / (lr K) and knows w0, the local
learning rate lr and step count K (the FL configuration it sent; recorded with the update), and
what the attacker is declared to know (batch size, lengths).

What changes against a gradient (`exact.Exact`):
- The midpoint model. U = (1/K) sum_k g(w_k) with w_k ~ w0 - k lr U: the gradient at the
  trajectory's midpoint w0 - lr (K-1)/2 U to second order. Search, peeling and label recovery
  run on that model (the inputs' layer-0 embeddings drift too: E_k[t] = E_0[t] - lr sum_j g_j[t]).
- Spans above a plateau (`text.noisy_span`). Rounding each float32 local step leaves about
  ulp(w) / (lr K) per entry, and the drift adds a few weak directions: no rank gap, but the
  singular values past the declared token count form a plateau the rank and the certificate are
  read against.
- Peeling: a sentence's midpoint gradient must take its directions out of the span
  (`noisy_span.after_peel`).
- The certificate: once the whole batch and its labels are guessed, the K local steps are
  simulated from w0, in the update's dtype, and compared with U. Only the true batch matches to
  rounding (measured on MiniLM, K = 4, batch 4: 0 in the victim's sentence order, 2.5e-6 in
  another; one token wrong: 0.14; one label wrong: 0.52, relative).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..errors import InputError
from ..text import leakage as lk
from ..text import noisy_span as ns
from .base import AttackOutput
from .exact import Exact


#: under additive noise a direction counts once it clears the Marchenko-Pastur edge by this factor
NOISE_MARGIN = 1.5


@dataclass(frozen=True)
class UpdateFacts:
    """How the client made its update: `steps` local SGD steps at learning rate `lr`."""

    steps: int
    lr: float

    @property
    def midpoint(self) -> float:
        """How many steps along the trajectory its average gradient sits."""
        return (self.steps - 1) / 2


def update_facts(metadata: Mapping[str, Any]) -> UpdateFacts:
    """K and lr from the file (`capture.defence.params`, or `capture.update` for a file written
    by other tools); a one-line InputError naming what is missing (a malformed file, not a fact
    the attacker lacks: `auto` must not fall back to treating the update as a gradient)."""
    capture = metadata.get("capture", {}) or {}
    params = dict((capture.get("defence") or {}).get("params") or {})
    params.update(capture.get("update") or {})
    missing = [k for k in ("local_lr", "local_steps") if params.get(k) is None]
    if missing:
        raise InputError(
            "the file holds a weight update (w0 - wK) / (lr K); reading it needs the client's local learning "
            f"rate and step count, and the file lacks {' and '.join(missing)} (record them under capture.update)")
    steps, lr = int(params["local_steps"]), float(params["local_lr"])
    if steps < 1 or not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"the update's local_steps {steps} and local_lr {lr} must be positive")
    return UpdateFacts(steps, lr)


def midpoint_model(model: torch.nn.Module, update: Mapping[str, torch.Tensor], facts: UpdateFacts) -> torch.nn.Module:
    """A copy of `model` moved to the middle of the client's trajectory, w0 - lr (K-1)/2 U."""
    mid = copy.deepcopy(model)
    if facts.midpoint:
        with torch.no_grad():
            for name, p in mid.named_parameters():
                if name in update:
                    p.sub_((facts.lr * facts.midpoint) * update[name].to(p.dtype))
    return mid


class SpanReader:
    """Reads layer spans above the update's plateau, with the rank bounded by the tokens still in
    the batch (declared lengths; layer 0 sees one [CLS] input per batch at position 0)."""

    def __init__(self, lengths: Sequence[int] | None, special_tokens: bool = True, sigma: float | None = None):
        self.lengths = list(lengths) if lengths is not None else None
        self.special = special_tokens
        self.sigma = sigma  # additive noise: the plateau is its Marchenko-Pastur edge
        self.removed: list[int] = []  # lengths of the sentences taken out

    def bound(self, layer: int) -> int | None:
        if self.lengths is None:
            return None
        left = list(self.lengths)
        for n in self.removed:
            left.remove(n)
        if not left:
            return None
        shared = len(left) - 1 if layer == 0 and self.special else 0
        return sum(left) - shared

    def __call__(self, gradients: Mapping[str, torch.Tensor], layer: int) -> ns.NoisySpan:
        return self.read(ns.gradient_matrix(gradients, layer), layer)

    def read(self, matrix: torch.Tensor, layer: int) -> ns.NoisySpan:
        bound = self.bound(layer)
        if self.sigma is not None:
            return ns.span_of(matrix, layer, rank_bound=bound, sigma=self.sigma, margin=NOISE_MARGIN)
        return ns.span_of(matrix, layer, rank_bound=bound, keep_bound=True)


def _captured(values: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: v.to(grads[n].dtype) for n, v in values.items()}


def simulate_update(model: torch.nn.Module, sequences: Sequence[Sequence[int]], labels: Sequence[int],
                    facts: UpdateFacts) -> dict[str, torch.Tensor]:
    """(w0 - wK) / (lr K) after the client's K SGD steps on this batch (classification), computed
    as the victim computes it (`defences.sharing`), model restored afterwards."""
    from ..core.seeding import model_mode
    from ..defences.sharing import batch_gradients

    L = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(sequences):
        ids[b, :len(s)] = torch.tensor(list(s))
        mask[b, :len(s)] = 1
    y = torch.tensor([int(c) for c in labels])

    def loss_of(rows):
        rows = list(rows)
        return model(input_ids=ids[rows], attention_mask=mask[rows], token_type_ids=torch.zeros_like(ids[rows]),
                     labels=y[rows]).loss

    with model_mode(model, train=False), torch.enable_grad():
        return batch_gradients(model, loss_of, len(sequences)).local_update(facts.steps, facts.lr)


def _distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in a if n in b))


def _norm(a: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in a.values()))


def simulation_mismatch(model, update: Mapping[str, torch.Tensor], sequences, labels, facts: UpdateFacts) -> float:
    """||U - U_sim|| / ||U|| over every shared parameter, U_sim simulated in the model's dtype."""
    return _distance(update, simulate_update(model, sequences, labels, facts)) / max(_norm(update), 1e-300)


def simulation_check(model, update: Mapping[str, torch.Tensor], sequences, labels, facts: UpdateFacts,
                     factor: float = 3.0) -> dict[str, Any]:
    """Whether this batch and these labels made the update: the client's steps simulated in the
    update's dtype must land within `factor` x the rounding of that dtype of it, the rounding
    measured as the distance between the same simulation run in float32 and in float64.

    A relative threshold does not do: on a small random model (weights 10x smaller than BERT's)
    a wrong batch came within 1e-4 of U relative, because U is dominated by parameters whose
    update hardly depends on the text; and an estimate of the rounding from each weight's ulp
    overstates it wherever lr g is below half an ulp and the weight does not move at all. The
    float64 run measures what the rounding actually did. A true batch summed in another order
    (or on another device) differs from U by about that rounding; measured on MiniLM (K = 4,
    lr 1e-2, batch 4): 2.5e-6 relative in another order, against 1.2e-4 for float64 and 0.14 for
    one token wrong."""
    own = simulate_update(model, sequences, labels, facts)
    exact = simulate_update(copy.deepcopy(model).double(), sequences, labels, facts)
    scale = max(_norm(update), 1e-300)
    mismatch, rounding = _distance(update, own) / scale, _distance(own, exact) / scale
    return {"mismatch": mismatch, "rounding": rounding, "factor": factor,
            "certified": mismatch <= factor * rounding or mismatch == 0.0}


@dataclass
class UpdateExact(Exact):
    """`exact` on a FedAvg update (see the module docstring); `exact` (and so `auto`) hands updates here."""

    name: ClassVar[str] = "exact-update"

    def run(self, observation, target, **_: Any) -> AttackOutput:
        facts = update_facts(observation.metadata)
        know = observation.knowledge
        self._facts, self._origin = facts, target.model
        self._reader = SpanReader(know.seq_lengths, bool(know.special_tokens))
        moved = copy.copy(target)
        moved.model = midpoint_model(target.model, observation.gradients, facts)
        with lk.span_reader(self._reader):
            out = super().run(observation, moved)
        out.method = self.name
        if observation.task == "classify":
            self._certify(observation, target.model, facts, out)
        out.details["update"] = {"local_steps": facts.steps, "local_lr": facts.lr,
                                 "read_at": f"midpoint of the local trajectory (step {facts.midpoint:g})"}
        out.assumed["update"] = "local learning rate and step count from the file"
        return out

    @staticmethod
    def _certify(observation, model, facts: UpdateFacts, out: AttackOutput) -> None:
        """Simulate the client's steps on the guessed batch: with the labels solved, then with
        each one flipped (labels solved at the midpoint can be off); the closest is checked
        against the rounding (`simulation_check`)."""
        pred = out.prediction
        first = [int(y) for y in pred["labels"]]
        classes = int(model.config.num_labels)
        trials = [first] + [first[:b] + [c] + first[b + 1:] for b in range(len(first)) for c in range(classes)
                            if c != first[b]]
        check = simulation_check(model, observation.gradients, pred["token_ids"], first, facts)
        mismatches = [check["mismatch"]]
        if not check["certified"]:
            for labels in trials[1:]:
                mismatches.append(simulation_mismatch(model, observation.gradients, pred["token_ids"], labels, facts))
            best = min(range(len(mismatches)), key=mismatches.__getitem__)
            if best:
                check = simulation_check(model, observation.gradients, pred["token_ids"], trials[best], facts)
                pred["labels"] = trials[best]
        out.details["layer1_certified"] = out.details["certified"]
        out.details["certified"] = check["certified"]
        out.details["simulation"] = {**check, "labels_tried": len(mismatches)}

    def _peeler(self, observation, model, lengths, rank, mask_id, known_lengths):
        """No peeling: a sentence's share of an update is its average gradient along the
        client's trajectory, not its gradient at any one point (at the midpoint, its layer-1
        part is still off by ~2% on MiniLM, K = 4, lr 1e-2: ten times the rounding), so
        subtracting it leaves signal behind and the rank test fails for true sentences.
        Projecting its layer-1 inputs out of the span instead is exact, but the residual of
        the others against what is left equals their residual against the whole span: it
        narrows nothing. Found sentences are barred from the search; the simulation is the
        second certificate."""
        return None
