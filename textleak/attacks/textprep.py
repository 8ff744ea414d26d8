"""What every optimisation attack on text does first: fill in unknown facts from the gradient
(labels, lengths) and narrow the vocabulary to the tokens the gradient shows were present.
`TEXT_LEAKS` is that step as a preparation of the optimisation template (attacks/optimisation.py)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.device import module_device
from ..errors import MissingKnowledgeError
from ..threat import Observation
from ..text import leaks
from ..text.layouts import layout_for
from ..text.decode import allowed_token_ids
from ..text.inference import complete_knowledge
from ..text.problem import check_observation
from .optimisation import Prepared, Preparation


def prepare_text(observation: Observation, target: Any, *, restrict: bool = True
                 ) -> tuple[Observation, torch.Tensor | None, dict[str, str]]:
    """(observation with recovered facts, candidate token ids or None, notes on what was done)."""
    obs, notes = complete_knowledge(observation, target)
    if not restrict:
        return obs, None, notes
    layout = layout_for(target.model)
    leaked = leaks.embedding_token_set(layout, obs.gradients)
    allowed = allowed_token_ids(target.tokenizer)
    if leaked is not None:
        allowed = allowed.to(leaked.device)
        cands = leaked[torch.isin(leaked, allowed)]
        if len(cands):
            notes["candidates"] = f"{len(cands)} tokens: nonzero rows of the word-embedding gradient"
            return obs, cands, notes
    if obs.task == "classify":  # untied head: a noisy embedding gradient still shows its rows
        noisy = leaks.noisy_token_set(layout, obs.gradients)
        if noisy is not None:
            cands = noisy[torch.isin(noisy, allowed.to(noisy.device))]
            if len(cands):
                notes["candidates"] = (f"{len(cands)} tokens: word-embedding gradient rows standing out of "
                                       "the noise (8 robust standard deviations)")
                return obs, cands, notes
    try:
        span = leaks.layer_span(layout, obs.gradients, 0)
    except MissingKnowledgeError:
        return obs, None, notes
    if span.exact and obs.knowledge.seq_lengths is not None:
        vocab = torch.tensor(sorted(set(allowed.tolist()) | {target.tokenizer.mask_token_id} - {None}),
                             device=module_device(target.model))
        per_pos, _ = leaks.position_candidates(layout, span, vocab, max(obs.knowledge.seq_lengths))
        ids = sorted({t for c in per_pos for t, _ in c} & set(allowed.tolist()))
        if ids:
            notes["candidates"] = f"{len(ids)} tokens in the first layer's input span"
            return obs, torch.tensor(ids), notes
    return obs, None, notes


class TextLeaks(Preparation):
    """Labels, lengths and the token set read off the gradient (`prepare_text`), the attack's
    `restrict` setting choosing whether decoding keeps to the leaked tokens."""

    def check(self, attack, observation: Observation, target: Any) -> None:
        check_observation(target, observation, infer_lengths=True)
        if observation.knowledge.seq_lengths is None and leaks.max_length(layout_for(target.model), observation.gradients) is None:
            raise MissingKnowledgeError("inferring sequence lengths needs the position-embedding gradient, "
                                        "which the file does not share (or declare 'seq_lengths')")

    def __call__(self, attack, observation: Observation, target: Any) -> Prepared:
        obs, candidates, notes = prepare_text(observation, target, restrict=attack.restrict)
        return Prepared(obs, {"candidates": candidates}, notes)


TEXT_LEAKS = TextLeaks()
