"""One template for the optimisation attacks: DLG, TAG, iDLG, Inverting Gradients and LAMP-style
are presets of `GradientMatching`, each a configuration object (a dataclass of its settings)
over one `run`:

    preflight(observation, target)   raise MissingKnowledgeError, before any work, when the
                                     attack cannot run on this observation
    prepare(observation, target)     fill in what the attacker was not told, from the gradient:
                                     the preset's `PREPARE[modality]` (nothing by default; text
                                     leaks: labels, lengths, token set; last-layer labels: iDLG)
    make_problem(prepared, ...)      the `MatchingProblem` (`target.matching_problem` by default)
    match(...)                       `core.matching.match` with the preset's `MatchConfig`
                                     (`DEFAULTS[modality]`, overridden by the settings given)
    -> AttackOutput                  prediction, method, what was assumed, the config, details

A preset sets `name`, `modalities`, `DEFAULTS` and `PREPARE`, adds its own fields, and (where its
problem takes options) `problem_options`, `settings` or `make_problem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..core.matching import MatchConfig, MatchingProblem, match
from ..errors import InputError
from ..threat import Observation
from .base import AttackOutput, MatchOptions


@dataclass
class Prepared:
    """What an attack works on after its preparation."""

    observation: Observation  # with the facts filled in from the gradient
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the matching problem
    notes: dict[str, str] = field(default_factory=dict)  # how facts were obtained (joins `assumed`)
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the result's details


class Preparation:
    """A step that fills in facts before matching; `check` raises when it could not."""

    def check(self, attack: "GradientMatching", observation: Observation, target: Any) -> None:
        _check_problem(target, observation, infer_lengths=False)

    def __call__(self, attack: "GradientMatching", observation: Observation, target: Any) -> Prepared:
        return Prepared(observation)


AS_GIVEN = Preparation()


def _check_problem(target: Any, observation: Observation, **options: Any) -> None:
    if target.modality == "text":
        from ..text.problem import check_observation

        check_observation(target, observation, **options)
    else:
        from ..image.problem import check_observation

        check_observation(target, observation)


@dataclass
class GradientMatching(MatchOptions):
    """The template (see the module doc). Fields: the `MatchConfig` settings a user may override
    (`steps`, `restarts`, `optimizer`, `lr`, `distance`, `seed`, `snapshot_at`, `line_search`)."""

    name: ClassVar[str] = "matching"
    modalities: ClassVar[tuple[str, ...]] = ()
    #: modality -> the preparation that runs before matching (absent: the observation as given)
    PREPARE: ClassVar[dict[str, Preparation]] = {}

    snapshot_at: tuple[int, ...] | None = None
    line_search: str | None = None

    # -- the steps a preset may change --------------------------------------------------------
    def preparation(self, modality: str) -> Preparation:
        return self.PREPARE.get(modality, AS_GIVEN)

    def preflight(self, observation: Observation, target: Any) -> None:
        """Raise (MissingKnowledgeError, one line) before any work when this attack cannot run."""
        if target.modality not in self.modalities:
            raise InputError(f"attack {self.name!r} does not handle {target.modality}; "
                             f"it handles {', '.join(self.modalities)}")
        self.preparation(target.modality).check(self, observation, target)

    def problem_options(self, modality: str) -> dict[str, Any]:
        """The preset's own options of the matching problem."""
        return {}

    def make_problem(self, prepared: Prepared, target: Any, config: MatchConfig) -> MatchingProblem:
        options = {**self.problem_options(target.modality), **prepared.options}
        return target.matching_problem(prepared.observation, **options)

    def settings(self, problem: MatchingProblem) -> dict[str, Any]:
        """Settings recorded beside the MatchConfig (and naming the run for checkpoints)."""
        return {}

    # -- the template --------------------------------------------------------------------------
    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        self.preflight(observation, target)
        config = self.match_config(target.modality)
        prepared = self.preparation(target.modality)(self, observation, target)
        problem = self.make_problem(prepared, target, config)
        settings = self.settings(problem)
        device = getattr(problem, "device", None)
        observed = {n: (g if device is None else g.to(device)) for n, g in prepared.observation.gradients.items()}
        key = self.name + "".join(f":{k}={v}" for k, v in settings.items())
        outcome = match(problem, observed, config, checkpoint=checkpoint, resume=resume, progress=progress,
                        key_extra=key)
        return AttackOutput(prediction=problem.decode(outcome.variables), method=self.name,
                            assumed={**problem.assumed, **prepared.notes}, config={**config.to_dict(), **settings},
                            outcome=outcome, details=dict(prepared.details))

