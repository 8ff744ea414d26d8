"""What every attack is: a named, configurable object that turns an Observation into a guess.

An attack receives the `Observation` and the attacker's copy of the model (a *target*) and never
a `Reference`. It returns an `AttackOutput`, which states the method that ran and what it assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..core.matching import MatchOutcome
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
