"""What every attack is: a named, configurable object that turns an Observation into a guess.

An attack receives the `Observation` and the attacker's copy of the model (a *target*) and never
a `Reference`. It returns an `AttackOutput`, which states the method that ran and what it assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..core.matching import MatchConfig, MatchOutcome
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

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput: ...


ATTACKS: Registry[type] = Registry("attack")


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
