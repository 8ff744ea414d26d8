"""`recover`: the attacker's entry point, from a gradient file to a scored `RecoveryResult`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .attacks.base import prepare, preflight
from .core import budget as _budget
from .core.device import on_device, resolve_device
from .core.budget import Budget, time_budget
from .core.seeding import repeatable
from .errors import InputError
from .gradients import GradientFile
from .modalities import modality
from .result import RecoveryResult
from .threat import Observation, Reference
from .versions import versions


def recover(*, gradients: GradientFile | str | Path, model: Any = None, attack: str = "auto",
            reference: Reference | str | Path | None = None, unknown: Iterable[str] = (),
            options: Mapping[str, Any] | None = None, seed: int = 0,
            checkpoint: str | Path | None = None, resume: bool = False,
            progress: bool = True, device: Any = "auto", budget: float | None = None) -> RecoveryResult:
    """Recover the private batch behind `gradients`.

    gradients: a GradientFile or a path to one. model: None (the model the file names), a name or
    folder, or a target object. attack: a name in `ATTACKS`. reference: ground truth for scoring
    only (a Reference, a reference JSON, or a text file of sentences). unknown: declared facts to
    withdraw from the attacker (e.g. "labels"). options: the attack's own settings (steps, lr...;
    for `auto`, also each stage's settings by name: {"exact": {...}, "lamp": {...}}).
    checkpoint/resume: where to keep progress, and whether to continue from it.
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N": where the attack runs (the
    model is moved there for the attack and back).
    budget: wall-time limit of the attack in seconds (None: only an enclosing `time_budget`
    applies). When it runs out the attack returns its best guess so far; the result records
    `details["budget"]` ({"seconds", "used", "ran_out"}) and `details["certified"]` (whether a
    certificate vouches for the guess: only exact recovery gives one).
    """
    from .validate import attack_instance, gradient_input, names, resume_point
    from .threat import WITHDRAWABLE

    t0 = time.perf_counter()
    device = resolve_device(device)
    Budget(budget)  # a bad limit fails before any work
    # Every argument and the whole gradient file are checked before a model is built: the attack
    # and its settings first (they need no file), then the file, then whether they fit each other.
    attacker = attack_instance(attack, options, seed)
    gradients, source = gradient_input(gradients)
    mod = modality(gradients.metadata["modality"])
    if mod.name not in type(attacker).modalities:
        raise InputError(f"attack {attack!r} does not handle {mod.name}; it handles "
                         f"{', '.join(type(attacker).modalities)}")
    unknown = names(unknown, "unknown", WITHDRAWABLE)
    resume_point(checkpoint, resume, source)
    ref = _reference(reference, mod) if reference is not None else None  # fail early, before the work
    observation = Observation.from_file(gradients, unknown=unknown, device=device)  # the attacker's view
    target = mod.load_target(model, observation.metadata)
    mod.check(target, observation.metadata, gradients.gradients)
    prepare(attacker, target, observation)  # one-time work (a fitted cache) before the budget's clock starts
    t1 = time.perf_counter()
    # Same seed, same thread count, same machine type and versions: the same bits (see core/seeding).
    with repeatable(seed) as determinism, on_device(target.model, device), time_budget(budget) as limit:
        preflight(attacker, observation, target)
        output = attacker.run(observation, target, checkpoint=checkpoint, resume=resume, progress=progress)
        spent = limit.describe()
        # a search cut short by a time budget stopped where the clock said: a rerun may stop elsewhere
        determinism["time_budget_ran_out"] = _budget.current().ran_out
    determinism["device"] = str(device)
    t2 = time.perf_counter()
    return _result(attack, seed, mod, gradients, source, observation, output, ref, target,
                   {"load": t1 - t0, "attack": t2 - t1}, device, spent, determinism)


def _result(attack: str, seed: int, mod, gradients: GradientFile, source: str | None, observation: Observation,
            output, ref: Reference | None, target: Any, timings: dict[str, float], device,
            spent: dict[str, Any], determinism: dict[str, Any]) -> RecoveryResult:
    outcome = output.outcome
    best = outcome.snapshots[outcome.restart] if outcome else []
    result = RecoveryResult(
        attack=attack, method=output.method, modality=mod.name, prediction=output.prediction,
        knowledge=observation.knowledge.to_dict(), assumed=output.assumed, config=output.config, seed=seed,
        model=dict(gradients.metadata["model"]), gradient_file=source,
        distance=outcome.distance if outcome else None,
        history=outcome.history[outcome.restart] if outcome else [], snapshots=best,
        timings=timings, versions=versions(), details=output.details, determinism=determinism,
    )
    result.details["device"] = str(device)
    if observation.defence:  # the attacker is told what the victim applied (it matches the defended gradient as is)
        result.details["defence"] = observation.defence
    result.details["budget"] = spent
    result.details["certified"] = bool(result.details.get("certified", False))
    if outcome:
        result.details.update(restarts_diverged=sum(outcome.diverged), evaluations=outcome.evaluations,
                              resumed=outcome.resumed)
    if ref is not None:
        result.metrics = mod.score(result.prediction, ref, target)
    return result


def _reference(reference: Reference | str | Path, mod) -> Reference:
    from .io import as_path

    if isinstance(reference, Reference):
        return reference
    path = as_path(reference, "reference")
    if not path.is_file():
        raise InputError(f"reference file {path} does not exist")
    if path.suffix == ".json":
        return Reference.load(path)
    return mod.read_reference(str(path))
