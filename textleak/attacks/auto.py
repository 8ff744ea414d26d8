"""`auto`: the strongest attack that applies to this gradient, as a composite of configured attacks
(in the manner of torchattacks' MultiAttack): an ordered list of attack instances, each with its
own settings, tried in turn.

Text stages: `exact` (attacks/exact; it hands a FedAvg update to `exact-update` and a noisy
gradient to `exact-noisy`), `positions` (steps taken in train mode, dropout on), `beyond_rank`
(past the rank limit, where exact has no layer-1 certificate), `likelihood_batch` (noisy
classification batches of two or more), `likelihood` (noisy classification gradients only), `lamp`, `tag`, `dlg`; images: `idlg`. Before a stage does
any work its `preflight(observation, target)` runs; a stage that cannot run (MissingKnowledgeError,
e.g. only the head was shared or a frozen embedding; or an unsupported model) is skipped, and
`details["tried"]` says why. `positions` answers train-mode steps (an uncertified assembly is
kept: it sets `details["optimise_after"]` False, as the optimisation stages match eval-mode
gradients). `exact` is the answer when its sentences pass the layer-1 span
certificate (`details["certified"]`); an uncertified assembly is handed to the next stage that
takes a start (`initial_ids`: LAMP-style) and the two are compared by the layer-1 span residual
(the same certificate, computed without ground truth; under additive noise by the Gaussian
likelihood's misfit instead, `likelihood.noisy_choice`). `AttackOutput.method` names what ran
(e.g. "exact", "exact+lamp", "dlg").

Configuration: `Auto(stages=[...])` takes configured instances; otherwise each default stage is
built from `auto`'s shared settings (`steps`, `restarts`, `optimizer`, `lr`, `distance`, `decode`
for the optimisation stages, `prior` for LAMP, `seed` for all) and its own settings, given by
name: `recover(attack="auto", options={"steps": 50, "exact": {"widen": 2}, "lamp": {"prior": "none"}})`
(`textleak recover --option exact.widen=2 --option lamp.prior=none`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..errors import InputError, MissingKnowledgeError
from ..text import leaks
from ..text.layouts import layout_for
from ..threat import Observation
from .base import ATTACKS, CANNOT_RUN, AttackOutput, preflight, prepare
from .optimisation import GradientMatching

#: the default stages per modality, tried in this order
#: (#14) positions answers train-mode steps, which exact refuses; (#16) beyond_rank runs where exact
#: cannot certify past the rank limit (within it, its preflight refuses)
#: (#15) likelihood_batch takes noisy classification batches of 2 or more first, likelihood goes on from its guess
STAGES = {"text": ("exact", "positions", "beyond_rank", "likelihood_batch", "likelihood", "lamp", "tag", "dlg"),
          "image": ("idlg",)}
#: an earlier stage's records kept in the result when a later stage's guess is chosen (`likelihood_batch`'s final
#: whole-sentence move: exchanges kept, the batch misfit before and after)
HANDED_ON = ("relocate_last", "reseat", "runs")
#: settings shared by the optimisation stages (each takes those among its fields)
SHARED = ("steps", "restarts", "optimizer", "lr", "distance", "decode")


@ATTACKS.register("auto")
@dataclass
class Auto:
    name: ClassVar[str] = "auto"
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")

    seed: int = 0
    steps: int | None = None
    restarts: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    distance: str | None = None
    decode: str | None = None
    prior: str = "bigram"
    # each stage's own settings, by stage name (override the shared ones)
    exact: dict | None = None
    positions: dict | None = None  # train-mode steps (#14)
    beyond_rank: dict | None = None  # (#16)
    likelihood_batch: dict | None = None  # noisy gradients of 2+ sentences (#15)
    likelihood: dict | None = None  # noisy gradients (#15)
    lamp: dict | None = None
    tag: dict | None = None
    dlg: dict | None = None
    idlg: dict | None = None
    stages: Sequence[Any] | None = None  # configured instances, tried in order (replace the defaults)

    def __post_init__(self) -> None:
        self._configured = {m: self._configure(m) for m in STAGES} if self.stages is None else None

    def _configure(self, modality: str) -> list[Any]:
        """The default stages of `modality`, each with the shared settings it takes and its own."""
        built = []
        for stage in STAGES[modality]:
            cls = ATTACKS.get(stage)
            names = {f.name for f in fields(cls)}
            shared = {k: getattr(self, k) for k in SHARED if getattr(self, k) is not None and k in names
                      and issubclass(cls, GradientMatching)}
            if "prior" in names:
                shared["prior"] = self.prior
            own = getattr(self, stage) or {}
            try:
                built.append(cls(**{**shared, "seed": self.seed, **own}))
            except TypeError as exc:
                raise InputError(f"bad option for auto's stage {stage!r}: {exc}") from None
        return built

    def stages_for(self, modality: str) -> list[Any]:
        if self.stages is not None:
            return [s for s in self.stages if modality in getattr(s, "modalities", (modality,))]
        return list(self._configured[modality])

    def prepare(self, target: Any, observation: Observation | None = None, noisy: bool | None = None) -> None:
        """Each stage's one-time work for `target` (`base.prepare`, given the `observation` where
        there is one, or whether it may be noisy), before any time budget starts."""
        for stage in self.stages_for(target.modality):
            prepare(stage, target, observation, noisy=noisy)

    def preflight(self, observation: Observation, target: Any) -> None:
        """Raise when no stage can run (each stage's own reason, one line)."""
        reasons = []
        for stage in self.stages_for(target.modality):
            try:
                preflight(stage, observation, target)
                return
            except CANNOT_RUN as exc:
                reasons.append(f"{stage.name}: {exc}")
        raise MissingKnowledgeError("no attack applies: " + "; ".join(reasons))

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        tried: list[dict[str, str]] = []
        guess: AttackOutput | None = None  # an uncertified assembly, handed onward
        for stage in self.stages_for(target.modality):
            stage = self._adapted(stage, target, guess, tried)
            try:
                preflight(stage, observation, target)
                out = stage.run(observation, target, checkpoint=checkpoint, resume=resume, progress=progress)
            except CANNOT_RUN as exc:
                tried.append({"attack": stage.name, "reason": str(exc)})
                continue
            if out.details.get("certified") is False and out.details.get("optimise_after") is False:
                out.details["tried"] = tried  # the stage says no later stage can improve it (#14: positions)
                return out
            if out.details.get("certified") is False:
                tried.append({"attack": stage.name, "reason": out.details.get(
                    "uncertified", "assembly did not pass the layer-1 span certificate")})
                # (#16) a later certifying stage's guess (it reports its certified share) replaces an
                # earlier one; otherwise the better of the two guesses is kept (#15)
                if guess is None or "certified_share" in out.details:
                    guess = out
                else:
                    guess = _handed_on(guess, _better(observation, target, guess, out))
                continue
            # (#16) a certified answer stands; an optimisation stage's is compared with the guess
            if guess is not None and guess is not out and "certified" not in out.details:
                out = _handed_on(guess, _better(observation, target, guess, out))
            out.details["tried"] = tried
            return out
        if guess is not None:  # nothing after it ran: the uncertified assembly is the best there is
            guess.details["tried"] = tried
            return guess
        raise MissingKnowledgeError("no attack applies: " + "; ".join(f"{t['attack']}: {t['reason']}" for t in tried))

    def _adapted(self, stage: Any, target: Any, guess: AttackOutput | None, tried: list[dict[str, str]]) -> Any:
        """A stage as it runs here: started from the guess where it takes a start, and the default
        bigram prior swapped for none where there are no training sentences to fit it (said in `tried`)."""
        if not is_dataclass(stage):
            return stage
        names = {f.name for f in fields(stage)}
        if guess is not None and "initial_ids" in names:
            stage = replace(stage, initial_ids=_padded(guess.prediction["token_ids"]))
            # labels the guess's search placed (free labels, the counts placed by the likelihood, or carried with
            # their sentences by `likelihood_batch.relocate`)
            if "initial_labels" in names and (guess.details.get("relabel") or guess.details.get("labels_placed")
                                              or guess.details.get("labels_relocated")):
                stage = replace(stage, initial_labels=list(guess.prediction["labels"]))
        if getattr(stage, "prior", None) == "bigram" and not _bigram_available(target):
            tried.append({"attack": stage.name,
                          "reason": "no training sentences for the bigram prior; ran with prior 'none'"})
            stage = replace(stage, prior="none")
        return stage


def _handed_on(earlier: AttackOutput, chosen: AttackOutput) -> AttackOutput:
    """`chosen` (a later stage's guess or `earlier` itself) with the records of `earlier`'s search that say what its
    end state was made of (`HANDED_ON`), where `chosen` has none of its own: `auto`'s result is the continuation's."""
    for key in HANDED_ON:
        if key in earlier.details and key not in chosen.details:
            chosen.details[key] = earlier.details[key]
    return chosen


def _bigram_available(target: Any) -> bool:
    from ..text.prior import load_prior

    try:
        load_prior("bigram", target.tokenizer)
    except InputError:
        return False
    return True


def _padded(rows: list[list[int]]) -> torch.Tensor:
    L = max(len(r) for r in rows)
    return torch.tensor([list(r) + [0] * (L - len(r)) for r in rows])


def _better(observation: Observation, target: Any, exact_out: AttackOutput, opt_out: AttackOutput) -> AttackOutput:
    """Pick by the layer-1 span residual of each guess (no ground truth involved); under noise by
    the Gaussian likelihood (#15)."""
    from .likelihood import noisy_choice

    noisy = noisy_choice(observation, target, exact_out, opt_out)
    if noisy is not None:
        return noisy
    grads = observation.gradients
    layout = layout_for(target.model)
    if not layout.shared(grads, layout.qkv_names(1)):
        opt_out.method = f"{exact_out.method}+{opt_out.method}"
        return opt_out
    span1 = leaks.layer_span(layout, grads, 1)

    # masked-LM guesses carry labels at masked positions; the span saw the masked inputs
    def score(out: AttackOutput) -> float:
        rows = [list(r) for r in out.prediction["token_ids"]]
        if observation.task == "mlm" and observation.knowledge.mask_positions is not None:
            for b, pos in enumerate(observation.knowledge.mask_positions):
                for p in pos:
                    if p < len(rows[b]) and target.tokenizer.mask_token_id is not None:
                        rows[b][p] = target.tokenizer.mask_token_id
        return float(leaks.sequence_residuals(layout, span1, rows).sum())

    s_exact, s_opt = score(exact_out), score(opt_out)
    chosen = exact_out if s_exact <= s_opt else opt_out
    chosen.method = exact_out.method if chosen is exact_out else f"{exact_out.method}+{opt_out.method}"
    chosen.details = {**chosen.details, "layer1_residual": {exact_out.method: s_exact, opt_out.method: s_opt}}
    return chosen
