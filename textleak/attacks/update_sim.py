"""What a FedAvg client did, and replaying it: the facts of an update and the simulation certificate.

Shared by `exact-update` (SGD, `attacks.update`) and `exact-adamw` (AdamW, `attacks.adamw`).

An update U = (w0 - wK) / (lr K) is certified for a guessed batch when the client's K local
steps, replayed from w0 on that batch (with its labels, in the update's dtype), land on U to
within the rounding of that dtype (`simulation_check`). The replay needs the order the client
took its mini-batches in; the server knows the configuration (K, lr, mini-batch size, whether
epochs reshuffle: recorded with the update), not the order of the batch's sentences, so
`certify_batch` tries every assignment of the guessed sentences to the mini-batches
(`schedules`): B! / (MB!^(B/MB)) of them when the epochs keep one order, that to the power E
when each of the E epochs reshuffles; past `max_schedules` the batch is not certified and the
details say why.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import InputError
from ..text.layouts import Layout, layout_for
from ..threat import Observation


@dataclass(frozen=True)
class UpdateFacts:
    """How the client made its update: `steps` local steps at learning rate `lr` with `optimizer`
    (weight decay `weight_decay` for AdamW), on mini-batches of `minibatch` examples (None: the
    whole batch), every epoch reshuffled when `shuffle`."""

    steps: int
    lr: float
    minibatch: int | None = None
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    shuffle: bool = False

    @property
    def midpoint(self) -> float:
        """How many steps along the trajectory its average gradient sits."""
        return (self.steps - 1) / 2


def midpoint_model(model: torch.nn.Module, update: Mapping[str, torch.Tensor], facts: UpdateFacts) -> torch.nn.Module:
    """A copy of `model` moved to the middle of the client's trajectory, w0 - lr (K-1)/2 U."""
    mid = copy.deepcopy(model)
    if facts.midpoint:
        with torch.no_grad():
            for name, p in mid.named_parameters():
                if name in update:
                    p.sub_((facts.lr * facts.midpoint) * update[name].to(p.device, p.dtype))
    return mid


def shares_update(observation: Observation) -> bool:
    """Whether the file holds a weight update ((w0 - wK) / (lr K)) rather than a gradient."""
    capture = observation.metadata.get("capture", {}) or {}
    return (capture.get("defence") or {}).get("shares") == "update" or capture.get("shares") == "update"


def update_facts(metadata: Mapping[str, Any]) -> UpdateFacts:
    """K, lr (and mini-batch, optimiser, weight decay, shuffling) from the file (`capture.defence.params`,
    or `capture.update` for a file written by other tools); a one-line InputError naming what is missing
    (a malformed file, not a fact the attacker lacks: `auto` must not fall back to treating it as a gradient)."""
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
    return UpdateFacts(steps, lr, int(params.get("minibatch") or 0) or None, optimizer,
                       float(params.get("weight_decay") or 0.0), bool(params.get("shuffle") or 0))


def partitions(size: int, minibatch: int | None) -> list[list[list[int]]]:
    """Every ordered split of range(size) into mini-batches of `minibatch` (the last one shorter)."""
    if not minibatch or minibatch >= size:
        return [[list(range(size))]]

    def split(rest: list[int]) -> list[list[list[int]]]:
        if len(rest) <= minibatch:
            return [[rest]]
        return [[list(c)] + tail for c in itertools.combinations(rest, minibatch)
                for tail in split([i for i in rest if i not in c])]
    return split(list(range(size)))


def schedule_count(size: int, facts: UpdateFacts) -> int:
    """How many step schedules `schedules` would list (without listing them)."""
    if not facts.minibatch or facts.minibatch >= size:
        return 1
    sizes = [facts.minibatch] * (size // facts.minibatch) + ([size % facts.minibatch] if size % facts.minibatch else [])
    one = math.factorial(size) // math.prod(math.factorial(s) for s in sizes)
    return one ** math.ceil(facts.steps / len(sizes)) if facts.shuffle else one


def schedules(size: int, facts: UpdateFacts) -> list[list[list[int]]]:
    """Every schedule (example indices of each of the K steps) the client may have followed on a
    batch guessed in an unknown order: one split repeated every epoch, or, when epochs reshuffle,
    one split per epoch (distinct schedules only)."""
    splits = partitions(size, facts.minibatch)
    per_epoch = len(splits[0])
    epochs = math.ceil(facts.steps / per_epoch)
    combos = itertools.product(splits, repeat=epochs) if facts.shuffle and per_epoch > 1 else ((s,) * epochs
                                                                                                 for s in splits)
    seen, out = set(), []
    for combo in combos:
        steps = [c for split in combo for c in split][:facts.steps]
        key = tuple(tuple(c) for c in steps)
        if key not in seen:
            seen.add(key)
            out.append(steps)
    return out


def simulate_update(layout: Layout, sequences: Sequence[Sequence[int]], labels: Sequence[int],
                    facts: UpdateFacts, schedule: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """(w0 - wK) / (lr K) after the client's K steps on this batch (classification), computed as
    the victim computes it (`defences.sharing`), the model restored afterwards. `schedule`: the
    example indices of each step (default: mini-batches in the guessed order)."""
    from ..core.seeding import model_mode
    from ..defences.fedavg import epoch_schedule
    from ..defences.sharing import batch_gradients
    from ..text.leaks import padded

    model = layout.model
    ids, mask = padded(sequences, layout.device)
    y = torch.tensor([int(c) for c in labels], device=layout.device)

    def loss_of(rows):
        rows = list(rows)
        return model(**layout.inputs(ids[rows], mask[rows]), labels=y[rows]).loss

    schedule = schedule or epoch_schedule(len(sequences), facts.minibatch, facts.steps)
    with model_mode(model, train=False), torch.enable_grad():
        return batch_gradients(model, loss_of, len(sequences)).local_update(
            facts.steps, facts.lr, facts.minibatch, facts.optimizer, facts.weight_decay, schedule)


def _distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[n].double() - b[n].double().to(a[n].device)).pow(2).sum()) for n in a if n in b))


def _norm(a: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in a.values()))


def simulation_mismatch(layout: Layout, update, sequences, labels, facts: UpdateFacts, schedule=None) -> float:
    """||U - U_sim|| / ||U|| over every shared parameter, U_sim simulated in the model's dtype."""
    return _distance(update, simulate_update(layout, sequences, labels, facts, schedule)) / max(_norm(update), 1e-300)


#: a simulation further than this from U (relative) certifies nothing, whatever the rounding
MISMATCH_CAP = 1e-3


def simulation_check(layout: Layout, update, sequences, labels, facts: UpdateFacts, factor: float = 3.0,
                     schedule=None, cap: float = MISMATCH_CAP) -> dict[str, Any]:
    """Whether this batch and these labels made the update: the client's steps simulated in the
    update's dtype must land within `factor` x the rounding of that dtype of it, the rounding
    measured as the distance between the same simulation run in float32 and in float64.

    A relative threshold does not do: on a small random model (weights 10x smaller than BERT's)
    a wrong batch came within 1e-4 of U relative, because U is dominated by parameters whose
    update hardly depends on the text; and an estimate of the rounding from each weight's ulp
    overstates it wherever lr g is below half an ulp and the weight does not move at all. The
    float64 run measures what the rounding actually did. A true batch summed in another order
    differs from U by about that rounding; measured on MiniLM (K = 4, lr 1e-2, batch 4): 2.5e-6
    relative in another order, against 1.2e-4 for float64 and 0.14 for one token wrong.

    At small learning rates that rounding is no scale for the order of a sum: at lr 1e-5 most
    steps are lost in float32 (the float32 and float64 runs differ by 0.08 of U on CoLA dev batch
    1, K = 8), and "i don't want trouble trouble" (one token wrong, 0.16 from U) passed 3 x 0.08.
    So a mismatch above `cap` certifies nothing: in every FedAvg SGD batch of recipes/measured
    (sessions 8-11, lr 1e-5..1e-1, batches 1-8) the true batches replay within 1.9e-5 of U and
    every wrong guess is 0.031 or more from it."""
    own = simulate_update(layout, sequences, labels, facts, schedule)
    exact = simulate_update(layout_for(copy.deepcopy(layout.model).double()), sequences, labels, facts, schedule)
    scale = max(_norm(update), 1e-300)
    mismatch, rounding = _distance(update, own) / scale, _distance(own, exact) / scale
    return {"mismatch": mismatch, "rounding": rounding, "factor": factor,
            "cap": cap, "certified": mismatch == 0.0 or mismatch <= min(factor * rounding, cap)}


def certify_batch(layout: Layout, update, sequences, labels: Sequence[int], facts: UpdateFacts,
                  max_schedules: int = 256) -> tuple[dict[str, Any], list[int]]:
    """Replay the client's steps on a guessed batch: every mini-batch schedule (`schedules`) with the
    labels as solved, then, on the closest schedule, each single label flipped (labels solved from
    the update can be off); the closest is checked against the rounding (`simulation_check`).
    Returns (the check with what was tried, the labels it used)."""
    first = [int(y) for y in labels]
    count = schedule_count(len(sequences), facts)
    if count > max_schedules:
        return {"certified": False, "schedules": count, "reason": f"{count} orders of mini-batches to replay "
                f"(more than {max_schedules}): the batch's mini-batch order is unknown"}, first
    plans = schedules(len(sequences), facts)
    scored = [(simulation_mismatch(layout, update, sequences, first, facts, s), s) for s in plans] \
        if len(plans) > 1 else [(None, plans[0])]
    best_mismatch, plan = min(scored, key=lambda t: t[0] or 0.0)
    check = simulation_check(layout, update, sequences, first, facts, schedule=plan)
    tried = 1
    if not check["certified"]:
        classes = int(layout.model.config.num_labels)
        flips = [first[:b] + [c] + first[b + 1:] for b in range(len(first)) for c in range(classes) if c != first[b]]
        scored_labels = [(simulation_mismatch(layout, update, sequences, ys, facts, plan), ys) for ys in flips]
        tried += len(flips)
        if scored_labels and min(scored_labels)[0] < check["mismatch"]:
            first = min(scored_labels)[1]
            check = simulation_check(layout, update, sequences, first, facts, schedule=plan)
    details = {**check, "labels_tried": tried, "schedules": len(plans)}
    if len(plans) > 1:
        details["schedule"] = plan
    return details, first
