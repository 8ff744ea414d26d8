"""`recover`: the attacker's entry point, from a gradient file to a scored `RecoveryResult`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .attacks import ATTACKS
from .core import budget
from .core.seeding import repeatable
from .errors import InputError
from .gradients import GradientFile, load_gradients
from .modalities import modality
from .result import RecoveryResult
from .threat import Knowledge, Observation, Reference
from .versions import versions


def recover(*, gradients: GradientFile | str | Path, model: Any = None, attack: str = "auto",
            reference: Reference | str | Path | None = None, unknown: Iterable[str] = (),
            options: Mapping[str, Any] | None = None, seed: int = 0,
            checkpoint: str | Path | None = None, resume: bool = False,
            progress: bool = True) -> RecoveryResult:
    """Recover the private batch behind `gradients`.

    gradients: a GradientFile or a path to one. model: None (the model the file names), a name or
    folder, or a target object. attack: a name in `ATTACKS`. reference: ground truth for scoring
    only (a Reference, a reference JSON, or a text file of sentences). unknown: declared facts to
    withdraw from the attacker (e.g. "labels"). options: the attack's own settings (steps, lr...).
    checkpoint/resume: where to keep progress, and whether to continue from it.
    """
    t0 = time.perf_counter()
    source = None
    if not isinstance(gradients, GradientFile):
        source = str(gradients)
        gradients = load_gradients(gradients)
    mod = modality(gradients.metadata.get("modality", "?"))
    attack_cls = ATTACKS.get(attack)
    if mod.name not in attack_cls.modalities:
        raise InputError(f"attack {attack!r} does not handle {mod.name}; it handles {', '.join(attack_cls.modalities)}")
    try:
        attacker = attack_cls(seed=seed, **dict(options or {}))
    except TypeError as exc:
        raise InputError(f"bad option for attack {attack!r}: {exc}") from None
    ref = _reference(reference, mod) if reference is not None else None  # fail early, before the work
    target = mod.load_target(model, gradients.metadata)
    mod.check(target, gradients.metadata, gradients.gradients)
    knowledge = Knowledge.from_dict(gradients.metadata["knowledge"]).without(*unknown)
    observation = Observation(gradients.gradients, gradients.metadata, knowledge)
    t1 = time.perf_counter()
    # Same seed, same thread count, same machine type and versions: the same bits (see core/seeding).
    with repeatable(seed) as determinism:
        output = attacker.run(observation, target, checkpoint=checkpoint, resume=resume, progress=progress)
        # a search cut short by a time budget stopped where the clock said: a rerun may stop elsewhere
        determinism["time_budget_ran_out"] = budget.current().ran_out
    t2 = time.perf_counter()
    outcome = output.outcome
    best = outcome.snapshots[outcome.restart] if outcome else []
    result = RecoveryResult(
        attack=attack, method=output.method, modality=mod.name, prediction=output.prediction,
        knowledge=knowledge.to_dict(), assumed=output.assumed, config=output.config, seed=seed,
        model=dict(gradients.metadata["model"]), gradient_file=source,
        distance=outcome.distance if outcome else None,
        history=outcome.history[outcome.restart] if outcome else [], snapshots=best,
        timings={"load": t1 - t0, "attack": t2 - t1}, versions=versions(), details=output.details,
        determinism=determinism,
    )
    defence = gradients.metadata.get("capture", {}).get("defence")
    if defence:  # the attacker is told what the victim applied (it matches the defended gradient as is)
        result.details["defence"] = defence
    if outcome:
        result.details.update(restarts_diverged=sum(outcome.diverged), evaluations=outcome.evaluations,
                              resumed=outcome.resumed)
    if ref is not None:
        result.metrics = mod.score(result.prediction, ref, target)
    return result


def _reference(reference: Reference | str | Path, mod) -> Reference:
    if isinstance(reference, Reference):
        return reference
    path = Path(reference)
    if not path.is_file():
        raise InputError(f"reference file {path} does not exist")
    if path.suffix == ".json":
        return Reference.load(path)
    return mod.read_reference(str(path))
