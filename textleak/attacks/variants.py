"""Which of `exact`'s variants reads an observation: `exact-update` (`attacks.update`) for a FedAvg SGD
update, `exact-adamw` (`attacks.adamw`) for an AdamW one, `exact-noisy` (`attacks.noisy`) for a gradient
whose first layer shows no rank gap under additive noise; `exact` itself for a plain gradient. `Exact._variant`
asks here, so `exact` (and `auto`) hand each file to the variant that reads it, with the same options.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..text.layouts import layout_for
from ..text.leaks import noise_level
from ..threat import Observation
from .exact import Exact
from .update import UpdateExact
from .update_sim import shares_update, update_facts


def variant_for(exact: Exact, observation: Observation, target: Any) -> Exact | None:
    """The variant of `exact` (same options) that reads this file: `UpdateExact` for a FedAvg
    SGD update, `AdamWExact` (`attacks.adamw`) for an AdamW one, `NoisyExact` for a gradient
    whose first layer shows no rank gap and whose
    signal-free entries hold noise; None for a plain gradient."""
    options = {f.name: getattr(exact, f.name) for f in fields(exact)}
    if shares_update(observation):
        if update_facts(observation.metadata).optimizer == "adamw":
            from .adamw import AdamWExact

            return AdamWExact(seed=exact.seed)  # type: ignore[return-value]
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
