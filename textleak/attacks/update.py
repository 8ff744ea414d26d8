"""`exact-update`: exact recovery from a FedAvg client update: K local SGD steps shared as a weight difference
(McMahan et al. 2017), read the way DAGER (Petrov et al., NeurIPS 2024, Sec. 5) reads it, as the
average gradient along the client's trajectory.

Threat model: honest-but-curious server. It sees U = (w0 - wK) / (lr K) and knows w0, the local
learning rate lr and step count K (the FL configuration it sent; recorded with the update), and
what the attacker is declared to know (batch size, lengths).

What changes against a gradient (`attacks.exact.Exact`, which hands updates here):
- The midpoint model. U = (1/K) sum_k g(w_k) with w_k ~ w0 - k lr U: the gradient at the
  trajectory's midpoint w0 - lr (K-1)/2 U to second order. Search, peeling and label recovery
  run on that model (the inputs' layer-0 embeddings drift too: E_k[t] = E_0[t] - lr sum_j g_j[t]).
- Spans above a plateau (`text.leaks.noise`). Rounding each float32 local step leaves about
  ulp(w) / (lr K) per entry, and the drift adds a few weak directions: no rank gap, but the
  singular values past the declared token count form a plateau the rank and the certificate are
  read against.
- No peeling (`UpdateExact._peeler` says why): found sentences are barred, the simulation below
  is the second certificate.
- The certificate: once the whole batch and its labels are guessed, the K local steps are
  simulated from w0, in the update's dtype, and compared with U. Only the true batch matches to
  rounding (measured on MiniLM, K = 4, batch 4: 0 in the victim's sentence order, 2.5e-6 in
  another; one token wrong: 0.14; one label wrong: 0.52, relative).

Mini-batches (`fedavg:K,LR,MB`) are simulated in the order the batch is guessed in; AdamW
updates (`fedadamw`) are refused with what still leaks (the token set, the longest length, the
label direction: U ~ sign(G) entrywise, so no linear span test separates true sentences).

Arguments: as `Exact`. Shapes: the update is keyed by parameter name like a gradient.
Bad input: an update recorded without its local learning rate or step count gets a one-line
InputError naming what is missing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..errors import InputError, MissingKnowledgeError
from ..text.layouts import Layout, layout_for
from ..text.leaks import LayerSpan, SpanReader, noise_level
from ..threat import Observation
from .base import ATTACKS, AttackOutput
from .exact import Exact


@dataclass(frozen=True)
class UpdateFacts:
    """How the client made its update: `steps` local steps at learning rate `lr` with `optimizer`,
    on mini-batches of `minibatch` examples (None: the whole batch)."""

    steps: int
    lr: float
    minibatch: int | None = None
    optimizer: str = "sgd"

    @property
    def midpoint(self) -> float:
        """How many steps along the trajectory its average gradient sits."""
        return (self.steps - 1) / 2


def shares_update(observation: Observation) -> bool:
    """Whether the file holds a weight update ((w0 - wK) / (lr K)) rather than a gradient."""
    capture = observation.metadata.get("capture", {}) or {}
    return (capture.get("defence") or {}).get("shares") == "update" or capture.get("shares") == "update"


def update_facts(metadata: Mapping[str, Any]) -> UpdateFacts:
    """K, lr (and mini-batch, optimiser) from the file (`capture.defence.params`, or `capture.update`
    for a file written by other tools); a one-line InputError naming what is missing (a malformed
    file, not a fact the attacker lacks: `auto` must not fall back to treating it as a gradient)."""
    capture = metadata.get("capture", {}) or {}
    defence = capture.get("defence") or {}
    params = dict(defence.get("params") or {})
    params.update(capture.get("update") or {})
    missing = [k for k in ("local_lr", "local_steps") if params.get(k) is None]
    if missing:
        raise InputError(
            "the file holds a weight update (w0 - wK) / (lr K); reading it needs the client's local learning "
            f"rate and step count, and the file lacks {' and '.join(missing)} (record them under capture.update)")
    steps, lr = int(params["local_steps"]), float(params["local_lr"])
    if steps < 1 or not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"the update's local_steps {steps} and local_lr {lr} must be positive")
    optimizer = str(params.get("optimizer") or defence.get("optimizer") or "sgd")
    return UpdateFacts(steps, lr, int(params.get("minibatch") or 0) or None, optimizer)


def midpoint_model(model: torch.nn.Module, update: Mapping[str, torch.Tensor], facts: UpdateFacts) -> torch.nn.Module:
    """A copy of `model` moved to the middle of the client's trajectory, w0 - lr (K-1)/2 U."""
    mid = copy.deepcopy(model)
    if facts.midpoint:
        with torch.no_grad():
            for name, p in mid.named_parameters():
                if name in update:
                    p.sub_((facts.lr * facts.midpoint) * update[name].to(p.device, p.dtype))
    return mid


def simulate_update(layout: Layout, sequences: Sequence[Sequence[int]], labels: Sequence[int],
                    facts: UpdateFacts) -> dict[str, torch.Tensor]:
    """(w0 - wK) / (lr K) after the client's K steps on this batch (classification), computed as
    the victim computes it (`defences.sharing`), the model restored afterwards."""
    from ..core.seeding import model_mode
    from ..defences.sharing import batch_gradients
    from ..text.leaks import padded

    model = layout.model
    ids, mask = padded(sequences, layout.device)
    y = torch.tensor([int(c) for c in labels], device=layout.device)

    def loss_of(rows):
        rows = list(rows)
        return model(**layout.inputs(ids[rows], mask[rows]), labels=y[rows]).loss

    with model_mode(model, train=False), torch.enable_grad():
        return batch_gradients(model, loss_of, len(sequences)).local_update(
            facts.steps, facts.lr, facts.minibatch, facts.optimizer)


def _distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[n].double() - b[n].double().to(a[n].device)).pow(2).sum()) for n in a if n in b))


def _norm(a: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in a.values()))


def simulation_mismatch(layout: Layout, update, sequences, labels, facts: UpdateFacts) -> float:
    """||U - U_sim|| / ||U|| over every shared parameter, U_sim simulated in the model's dtype."""
    return _distance(update, simulate_update(layout, sequences, labels, facts)) / max(_norm(update), 1e-300)


def simulation_check(layout: Layout, update, sequences, labels, facts: UpdateFacts, factor: float = 3.0
                     ) -> dict[str, Any]:
    """Whether this batch and these labels made the update: the client's steps simulated in the
    update's dtype must land within `factor` x the rounding of that dtype of it, the rounding
    measured as the distance between the same simulation run in float32 and in float64.

    A relative threshold does not do: on a small random model (weights 10x smaller than BERT's)
    a wrong batch came within 1e-4 of U relative, because U is dominated by parameters whose
    update hardly depends on the text; and an estimate of the rounding from each weight's ulp
    overstates it wherever lr g is below half an ulp and the weight does not move at all. The
    float64 run measures what the rounding actually did. A true batch summed in another order
    differs from U by about that rounding; measured on MiniLM (K = 4, lr 1e-2, batch 4): 2.5e-6
    relative in another order, against 1.2e-4 for float64 and 0.14 for one token wrong."""
    own = simulate_update(layout, sequences, labels, facts)
    exact = simulate_update(layout_for(copy.deepcopy(layout.model).double()), sequences, labels, facts)
    scale = max(_norm(update), 1e-300)
    mismatch, rounding = _distance(update, own) / scale, _distance(own, exact) / scale
    return {"mismatch": mismatch, "rounding": rounding, "factor": factor,
            "certified": mismatch <= factor * rounding or mismatch == 0.0}


@ATTACKS.register("exact-update")
@dataclass
class UpdateExact(Exact):
    """`exact` on a FedAvg update (see the module docstring); `exact` (and so `auto`) hands updates here."""

    name: ClassVar[str] = "exact-update"

    def preflight(self, observation: Observation, target: Any) -> None:
        self._facts_of(observation)
        self._layer0(observation, target)

    def run(self, observation: Observation, target: Any, **_: Any) -> AttackOutput:
        facts = self._facts_of(observation)
        moved = copy.copy(target)
        moved.model = midpoint_model(target.model, observation.gradients, facts)
        out = Exact.run(self, observation, moved)
        out.method = self.name
        if observation.task == "classify":
            self._certify(observation, layout_for(target.model), facts, out)
        out.details["update"] = {"local_steps": facts.steps, "local_lr": facts.lr, "minibatch": facts.minibatch,
                                 "read_at": f"midpoint of the local trajectory (step {facts.midpoint:g})"}
        out.assumed["update"] = "local learning rate and step count from the file"
        return out

    @staticmethod
    def _facts_of(observation: Observation) -> UpdateFacts:
        facts = update_facts(observation.metadata)
        if facts.optimizer != "sgd":
            raise MissingKnowledgeError(
                f"exact recovery reads SGD updates; this {facts.optimizer} update is ~sign(gradient) entrywise, "
                "so no span test separates its sentences (its token set, longest length and label direction "
                "still leak)")
        return facts

    def _reader(self, observation: Observation) -> SpanReader:
        know = observation.knowledge
        return SpanReader(know.seq_lengths, bool(know.special_tokens))

    def _layer0(self, observation: Observation, target: Any, tokens: int | None = None) -> tuple[Layout, LayerSpan]:
        layout = layout_for(target.model)
        span0 = self._reader(observation)(layout, observation.gradients, 0)
        if not span0.exact:
            raise MissingKnowledgeError(
                f"the update's first-layer spectrum shows no signal above its plateau (gap {span0.gap:.3g}; "
                "learning rate too small for float32, or too many tokens)")
        self._observation = observation
        return layout, span0

    def _layer1(self, layout: Layout, grads: Any, span0: LayerSpan, settings: Any = None,
                tokens: int | None = None) -> LayerSpan | None:
        if not layout.shared(grads, layout.qkv_names(1)):
            return None
        span1 = self._reader(self._observation)(layout, grads, 1)
        return None if span1.rank < span0.rank else span1

    def _peeler(self, *args: Any) -> None:
        """No peeling: a sentence's share of an update is its average gradient along the
        client's trajectory, not its gradient at any one point (at the midpoint, its layer-1
        part is still off by ~2% on MiniLM, K = 4, lr 1e-2: ten times the rounding), so
        subtracting it leaves signal behind and the rank test fails for true sentences.
        Projecting its layer-1 inputs out of the span instead is exact, but the residual of
        the others against what is left equals their residual against the whole span: it
        narrows nothing. Found sentences are barred from the search; the simulation is the
        second certificate."""
        return None

    @staticmethod
    def _certify(observation: Observation, layout: Layout, facts: UpdateFacts, out: AttackOutput) -> None:
        """Simulate the client's steps on the guessed batch: with the labels solved, then with
        each one flipped (labels solved at the midpoint can be off); the closest is checked
        against the rounding (`simulation_check`)."""
        pred, update = out.prediction, observation.gradients
        first = [int(y) for y in pred["labels"]]
        classes = int(layout.model.config.num_labels)
        trials = [first] + [first[:b] + [c] + first[b + 1:] for b in range(len(first)) for c in range(classes)
                            if c != first[b]]
        check = simulation_check(layout, update, pred["token_ids"], first, facts)
        mismatches = [check["mismatch"]]
        if not check["certified"]:
            mismatches += [simulation_mismatch(layout, update, pred["token_ids"], labels, facts) for labels in trials[1:]]
            best = min(range(len(mismatches)), key=mismatches.__getitem__)
            if best:
                check = simulation_check(layout, update, pred["token_ids"], trials[best], facts)
                pred["labels"] = trials[best]
        out.details["layer1_certified"] = out.details["certified"]
        out.details["certified"] = check["certified"]
        out.details["simulation"] = {**check, "labels_tried": len(mismatches)}


def variant_for(exact: Exact, observation: Observation, target: Any) -> Exact | None:
    """The variant of `exact` (same options) that reads this file: `UpdateExact` for a FedAvg
    update, `NoisyExact` for a gradient whose first layer shows no rank gap and whose
    signal-free entries hold noise; None for a plain gradient."""
    options = {f.name: getattr(exact, f.name) for f in fields(exact)}
    if shares_update(observation):
        return UpdateExact(**options)
    if getattr(target, "modality", "text") != "text":
        return None
    from ..text.leaks import layer_span

    layout = layout_for(target.model)
    lengths = observation.knowledge.seq_lengths
    if noise_level(layout, observation.gradients, max(lengths) if lengths else None) is None:
        return None
    if not layout.shared(observation.gradients, layout.qkv_names(0)) or \
            layer_span(layout, observation.gradients, 0, exact.span_test).exact:
        return None
    from .noisy import NoisyExact

    return NoisyExact(**options)
