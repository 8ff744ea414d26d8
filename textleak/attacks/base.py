"""What every attack is: a named, configurable object that turns an Observation into a guess.

An attack receives the `Observation` and the attacker's copy of the model (a *target*) and never
a `Reference`. `preflight(observation, target)` raises (MissingKnowledgeError, or an unsupported
model, in one line) before any work when it cannot run; `run` returns an `AttackOutput`, which
states the method that ran and what it assumed. `configure(name, seed, options)` builds a
registered attack from its settings, so a bad option is a one-line error; `parse_options` reads
settings written as `KEY=VALUE` (the CLI's `--option`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Protocol

from .. import errors
from ..core.matching import MatchConfig, MatchOutcome
from ..errors import InputError, MissingKnowledgeError
from ..registry import Registry
from ..threat import Observation


@dataclass
class AttackOutput:
    prediction: dict[str, Any]  # modality-specific: texts/token_ids/labels, or images/labels
    method: str  # the method that actually ran (e.g. "dlg", or what `auto` chose)
    assumed: dict[str, Any]  # how each fact was treated: known, recovered, optimised jointly
    config: dict[str, Any]
    outcome: MatchOutcome | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Attack(Protocol):
    name: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]]

    def preflight(self, observation: Observation, target: Any) -> None: ...

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput: ...


ATTACKS: Registry[type] = Registry("attack")

#: what an attack raises when it cannot run on an observation (a composite then tries the next):
#: missing knowledge, and an architecture without a layout where this textleak has that error
CANNOT_RUN: tuple[type[Exception], ...] = tuple(
    e for e in (MissingKnowledgeError, getattr(errors, "UnsupportedModelError", None)) if e is not None)


def configure(name: str, seed: int = 0, options: Mapping[str, Any] | None = None) -> Any:
    """The registered attack `name` with `seed` and its settings `options` (one-line error if bad)."""
    cls = ATTACKS.get(name)
    try:
        return cls(seed=seed, **dict(options or {}))
    except TypeError as exc:
        raise InputError(f"bad option for attack {name!r}: {exc}") from None


def parse_options(items: Iterable[str], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Attack settings from `KEY=VALUE` strings (VALUE read as JSON, else as text), added to
    `options`; `STAGE.KEY=VALUE` sets a setting of one stage of a composite (`exact.widen=2`)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (options or {}).items()}
    for item in items:
        key, sep, text = item.partition("=")
        stage, _, name = key.strip().rpartition(".")
        if not sep or not name:
            raise InputError(f"bad option {item!r}; write KEY=VALUE, or STAGE.KEY=VALUE for a stage of auto")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        (out.setdefault(stage, {}) if stage else out)[name] = value
    return out


def preflight(attack: Any, observation: Observation, target: Any) -> None:
    """Run an attack's pre-flight check where it has one."""
    check = getattr(attack, "preflight", None)
    if check is not None:
        check(observation, target)


def prepare(attack: Any, target: Any, observation: Any = None, *, noisy: bool | None = None) -> None:
    """Run an attack's one-time preparation for `target` where it has one (`attack.prepare(target,
    observation)`: fitting what it caches, e.g. `likelihood.context`'s masked-LM head), so that it is
    not charged to an attack's time budget: `recover` calls it before the budget's clock starts, and so
    do sweeps and audits before their first unit (`sweep.UnitContext.prepare`) and recipes that start
    their own clock around `recover` (`recipes/fl_defences.run_unit`). With the `observation` (as
    `recover` has it) an attack prepares nothing where its preflight refuses it (a noiseless
    gradient: no head for the likelihood search); without one it prepares for any observation, or,
    with `noisy` False (a sweep none of whose defences adds noise, `Defence.adds_noise`), for a
    noiseless one only."""
    hook = getattr(attack, "prepare", None)
    if hook is not None:
        hook(target, observation, noisy=noisy)


@dataclass
class MatchOptions:
    """Settings every optimisation attack accepts; None keeps the attack's per-modality default.

    A subclass sets `DEFAULTS` (modality -> MatchConfig); any of its own fields named like a
    MatchConfig field (line_search, snapshot_at...) overrides that default too.
    """

    DEFAULTS: ClassVar[dict[str, MatchConfig]] = {}

    steps: int | None = None
    restarts: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    distance: str | None = None
    seed: int = 0

    def match_config(self, modality: str) -> MatchConfig:
        allowed = {f.name for f in fields(MatchConfig)}
        overrides = {f.name: getattr(self, f.name) for f in fields(self)
                     if f.name in allowed and getattr(self, f.name) is not None}
        return replace(self.DEFAULTS[modality], **overrides)
