"""What the `likelihood` search (`attacks.likelihood`) reads first and returns: whether a gradient
is one it searches (`noisy_setting`), the labels (`read_labels`), its guess as an `AttackOutput`
(`search_output`), and `auto`'s choice between two guesses of a noisy gradient (`noisy_choice`).
Split out of `attacks.likelihood` (session 17) to keep that file under the guide's ~400 lines;
same behaviour.

Shapes: sentences are token-id lists; gradients name -> tensor (the model's shapes).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import MissingKnowledgeError
from ..text.decode import ids_to_text
from ..text.layouts import Layout, layout_for
from ..text.leaks import class_label_counts, noise_level
from ..threat import Observation
from .base import AttackOutput
from .likelihood_state import misfit


def noisy_setting(observation: Observation, target: Any) -> tuple[Layout, list[int], Any]:
    """(layout, lengths, noise level) of a classification gradient with declared lengths, its
    embedding gradients and additive noise read off its signal-free entries; else
    MissingKnowledgeError (the likelihood search's preflight)."""
    if observation.task != "classify":
        raise MissingKnowledgeError("the likelihood search scores classification gradients")
    know, grads = observation.knowledge, observation.gradients
    if know.seq_lengths is None:
        raise MissingKnowledgeError("the likelihood search needs the declared sequence lengths")
    layout = layout_for(target.model)
    if layout.word_embedding_name not in grads or layout.position_embedding_name not in grads:
        raise MissingKnowledgeError("the likelihood search needs the embedding gradients")
    lengths = [int(n) for n in know.seq_lengths]
    level = noise_level(layout, grads, max(lengths))
    if level is None:
        raise MissingKnowledgeError("no additive noise is read off the gradient (the likelihood search is for "
                                    "noisy gradients)")
    return layout, lengths, level


def read_labels(layout: Layout, grads, know, batch_size: int) -> tuple[list[int], str]:
    """The labels (known, else the counts read off the classifier bias, assigned in order) and how."""
    if know.labels is not None:
        return [int(y) for y in know.labels], "known"
    counts = class_label_counts(layout, grads, batch_size)
    return [c for c, k in enumerate(counts) for _ in range(k)], \
        "counts read off the classifier bias gradient (assigned in order)"


def search_output(method: str, config: dict, batch, grads, level, tok, know, label_note: str,
                  details: dict) -> AttackOutput:
    """The guess as a result: its texts, the noise level it was read against and how well the
    guess explains the gradient (misfit per entry over sigma^2, and its z-score), plus `details`."""
    entries = sum(grads[n].numel() for n in batch.names)
    fit = batch.misfit() / (entries * level.sigma ** 2)
    prediction = {"token_ids": batch.seqs, "labels": batch.labels,
                  "texts": [ids_to_text(tok, s) for s in batch.seqs]}
    details = {"certified": False, "uncertified": "a likelihood search certifies nothing (its guess goes on)",
               "noise": {"sigma": level.sigma, "source": level.source},
               "fit": {"misfit_per_entry_over_sigma2": fit, "entries": entries,
                       "z": (fit - 1) / math.sqrt(2 / entries)}, **details}
    return AttackOutput(prediction=prediction, method=method,
                        assumed={"seq_lengths": "known", "labels": label_note,
                                 "special_tokens": bool(know.special_tokens)},
                        config=config, details=details)


def noisy_choice(observation: Observation, target: Any, first: AttackOutput, second: AttackOutput
                 ) -> AttackOutput | None:
    """`auto`'s choice between two guesses of a noisy classification gradient: the one with the
    least misfit (the Gaussian likelihood, which the layer-1 residual no longer measures); None
    where the likelihood search does not apply (no noise read off the gradient)."""
    try:
        noisy_setting(observation, target)
    except MissingKnowledgeError:
        return None
    scores = {}
    for out in (first, second):
        pred = out.prediction
        if "labels" not in pred or len(pred["labels"]) != len(pred["token_ids"]):
            return None
        scores[out.method] = misfit(observation, target, pred["token_ids"], pred["labels"])
    chosen = first if scores[first.method] <= scores[second.method] else second
    chosen.details = {**chosen.details, "misfit": scores}
    chosen.method = first.method if chosen is first else f"{first.method}+{second.method}"
    return chosen
