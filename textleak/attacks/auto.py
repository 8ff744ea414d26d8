"""`auto`: the strongest attack that applies to this gradient, chosen from the gradient itself.

Order: `exact` (attacks/exact.py) when the first layer's gradient has a rank gap (B x L < H);
if its sentences pass the layer-1 span certificate they are the answer. Otherwise the
LAMP-style optimisation (attacks/lamp.py) runs on the leaked token set, started from exact's
assembly when there is one, and whichever of the two leaves the smaller layer-1 span residual
(the same certificate, computed without ground truth) is returned. When an attack lacks a
parameter it needs (MissingKnowledgeError: e.g. only the head was shared, or a frozen
embedding), the next one is tried: exact -> lamp -> tag -> dlg. `AttackOutput.method` names what
ran (e.g. "exact", "exact+lamp", "dlg") and `details["tried"]` why the others did not. For images, `auto` is iDLG (labels read off the
last layer, then DLG on the pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import MissingKnowledgeError
from ..text import leakage as lk
from ..threat import Observation
from .base import ATTACKS, AttackOutput, MatchOptions
from .dlg import DLG
from .exact import Exact
from .idlg import IDLG
from .lamp import LAMP
from .tag import TAG


@ATTACKS.register("auto")
@dataclass
class Auto(MatchOptions):
    name: ClassVar[str] = "auto"
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")

    prior: str = "bigram"

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        opts = {k: getattr(self, k) for k in ("steps", "restarts", "optimizer", "lr", "distance")
                if getattr(self, k) is not None}
        if target.modality == "image":
            return IDLG(seed=self.seed, **opts).run(observation, target, checkpoint=checkpoint, resume=resume,
                                                    progress=progress)
        tried: list[dict[str, str]] = []
        exact_out: AttackOutput | None = None
        try:
            exact_out = Exact(seed=self.seed).run(observation, target)
        except MissingKnowledgeError as exc:
            tried.append({"attack": "exact", "reason": str(exc)})
        if exact_out is not None and exact_out.details["certified"]:
            exact_out.details["tried"] = tried
            return exact_out
        if exact_out is not None:
            tried.append({"attack": "exact", "reason": "assembly did not pass the layer-1 span certificate"})
        prior = self.prior
        if prior == "bigram" and not _bigram_available(target):
            prior = "none"
        from .likelihood import under_noise  # additive noise: scored by its likelihood (attacks/likelihood.py)

        noisy = under_noise(observation, target, exact_out, self.seed, tried,
                            lamp=lambda init: LAMP(seed=self.seed, prior=prior, initial_ids=init, **opts))
        if noisy is not None:
            return noisy
        prior = self.prior
        if prior == "bigram" and not _bigram_available(target):
            # the default prior is fitted on training TSVs a user may not have: run unprimed, say so
            tried.append({"attack": "lamp", "reason": "no training sentences for the bigram prior; ran with prior 'none'"})
            prior = "none"
        fallbacks = [("lamp", lambda init: LAMP(seed=self.seed, prior=prior, initial_ids=init, **opts)),
                     ("tag", lambda init: TAG(seed=self.seed, **opts)),
                     ("dlg", lambda init: DLG(seed=self.seed, **opts))]
        for name, make in fallbacks:
            init = _padded(exact_out.prediction["token_ids"]) if exact_out is not None and name == "lamp" else None
            try:
                out = make(init).run(observation, target, checkpoint=checkpoint, resume=resume, progress=progress)
            except MissingKnowledgeError as exc:
                tried.append({"attack": name, "reason": str(exc)})
                continue
            if exact_out is not None:
                out = _better(observation, target, exact_out, out)
            out.details["tried"] = tried
            return out
        raise MissingKnowledgeError("no attack applies: " + "; ".join(f"{t['attack']}: {t['reason']}" for t in tried))


def _bigram_available(target: Any) -> bool:
    from ..errors import InputError
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
    """Pick by the layer-1 span residual of each guess (no ground truth involved)."""
    grads = observation.gradients
    if not lk.qkv_names(grads, 1):
        opt_out.method = f"exact+{opt_out.method}"
        return opt_out
    span1 = lk.layer_span(grads, 1)
    # masked-LM guesses carry labels at masked positions; the span saw the masked inputs
    def score(out: AttackOutput) -> float:
        rows = [list(r) for r in out.prediction["token_ids"]]
        if observation.task == "mlm" and observation.knowledge.mask_positions is not None:
            for b, pos in enumerate(observation.knowledge.mask_positions):
                for p in pos:
                    if p < len(rows[b]) and target.tokenizer.mask_token_id is not None:
                        rows[b][p] = target.tokenizer.mask_token_id
        return float(lk.sequence_residuals(target.model, span1, rows).sum())

    s_exact, s_opt = score(exact_out), score(opt_out)
    chosen = exact_out if s_exact <= s_opt else opt_out
    chosen.method = "exact" if chosen is exact_out else f"exact+{opt_out.method}"
    chosen.details = {**chosen.details, "layer1_residual": {"exact": s_exact, opt_out.method: s_opt}}
    return chosen
