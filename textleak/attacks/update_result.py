"""`exact-update`'s result assembly (`attacks.update`): the update's facts read and checked, the certificate by
replay, the choice between the `slots_first` pass and the span search's, and the facts in the result."""

from __future__ import annotations

from ..errors import MissingKnowledgeError
from ..text.layouts import Layout
from ..threat import Observation
from .base import AttackOutput
from .update_rounding import RoundingFits
from .update_sim import UpdateFacts, certify_batch, update_facts
from .update_small_lr import repair_misfit


def facts_of(observation: Observation) -> UpdateFacts:
    """The update's facts (`update_sim.update_facts`); an AdamW update refused (`exact-adamw` reads it)."""
    facts = update_facts(observation.metadata)
    if facts.optimizer != "sgd":
        raise MissingKnowledgeError(
            f"exact-update reads SGD updates; this {facts.optimizer} update is ~sign(gradient) entrywise, "
            "so no span test separates its sentences (exact-adamw reads what still leaks)")
    return facts


def certify(observation: Observation, layout: Layout, facts: UpdateFacts, out: AttackOutput) -> None:
    """Replay the client's steps on the guessed batch (`update_sim.certify_batch`: every order of
    its mini-batches, then single label flips)."""
    pred = out.prediction
    check, pred["labels"] = certify_batch(layout, observation.gradients, pred["token_ids"], pred["labels"], facts)
    out.details["layer1_certified"] = out.details["certified"]
    out.details["certified"] = check["certified"]
    out.details["simulation"] = check


def kept_pass(first: AttackOutput, out: AttackOutput) -> AttackOutput:
    """Neither certified: of the `slots_first` pass and the span search's, the batch of least box misfit, with
    both misfits in its details ("passes")."""
    passes = {"first": repair_misfit(first), "search": repair_misfit(out)}
    if passes["first"] < passes["search"]:
        out = first
    out.details["passes"] = {**passes, "kept": "first" if out is first else "search",
                             "first_cls_descent": first.details.get("cls_descent"),
                             "first_repair": first.details.get("repair")}
    return out


def described(out: AttackOutput, facts: UpdateFacts, fits: RoundingFits) -> AttackOutput:
    """The update's facts and how they were read, in the result."""
    out.details["update"] = {"local_steps": facts.steps, "local_lr": facts.lr, "minibatch": facts.minibatch,
                             "shuffle": facts.shuffle,
                             "read_at": f"midpoint of the local trajectory (step {facts.midpoint:g})"}
    if fits.fits:
        out.details["update"]["rounding"] = fits.describe()
    out.assumed["update"] = "local learning rate and step count from the file"
    return out
