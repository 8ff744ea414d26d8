"""The text modality's hooks for `recover`: model loading, compatibility check, scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError, ModelMismatchError
from ..metrics import score_text_batch
from ..modalities import MODALITIES, Modality
from ..threat import Reference
from .decode import ids_to_text
from .models import TextTarget, check_compatible, load_text_model, target_from_model
from .models import declared_shapes as text_declared_shapes


def load_target(model: Any, metadata: Mapping[str, Any]) -> TextTarget:
    spec = metadata["model"]
    if model is not None and not isinstance(model, (str, Path)):
        if isinstance(model, TextTarget):
            return model
        tokenizer = getattr(model, "textleak_tokenizer", None)
        if tokenizer is None:
            raise InputError("pass a TextTarget (textleak.text.models.target_from_model) for a model object")
        return target_from_model(model, tokenizer, task=spec["task"])
    if isinstance(model, str) and _is_image_model(model):
        raise ModelMismatchError(f"the gradient file is from a text model; {model!r} is an image model")
    if model is None and spec.get("head_seed", -1) < 0:
        raise InputError("this gradient file came from a model object; pass the same model with --model")
    return load_text_model(str(model) if model is not None else spec["name"], task=spec["task"],
                           num_labels=spec.get("num_labels") or 2, head_seed=max(spec.get("head_seed", 0), 0))


def _is_image_model(name: str) -> bool:
    from ..image.models import IMAGE_MODELS

    return name in IMAGE_MODELS and not Path(name).exists()


def check(target: TextTarget, metadata: Mapping[str, Any], gradients: Mapping[str, Any]) -> None:
    if metadata.get("modality") != "text":
        raise InputError(f"gradient file is from an {metadata.get('modality')} model, not a text model")
    check_compatible(metadata["model"], target.spec, gradients, target.model)
    knowledge = metadata.get("knowledge") or {}
    longest = max(knowledge.get("seq_lengths") or [0])
    if longest > target.max_positions:
        raise InputError(f"the metadata declares a sequence of {longest} tokens; the model takes at most "
                         f"{target.max_positions}")
    vocab = target.model.get_input_embeddings().num_embeddings
    if target.spec.task == "mlm" and any(t >= vocab for y in knowledge.get("labels") or [] for t in y):
        raise InputError(f"the metadata declares a masked token id outside the model's vocabulary of {vocab}")


def declared_shapes(metadata: Mapping[str, Any]) -> dict[str, tuple] | None:
    spec = metadata["model"]
    if spec.get("head_seed", 0) < 0:  # a model object: the attacker must pass it
        return None
    return text_declared_shapes(spec["name"], task=spec["task"], num_labels=spec.get("num_labels"))


def score(prediction: Mapping[str, Any], reference: Reference, target: TextTarget) -> dict:
    if not reference.texts:
        raise InputError("the reference holds no text")
    ref_ids = reference.token_ids or [target.tokenizer(t)["input_ids"] for t in reference.texts]
    # ROUGE compares text as the tokenizer renders the ids on both sides: the raw sentence would
    # charge the attack for the tokenizer's own normalisation ("is n't" decodes as "isn't")
    ref_texts = [ids_to_text(target.tokenizer, ids) for ids in ref_ids]
    scores = score_text_batch(prediction["texts"], ref_texts, prediction["token_ids"], ref_ids)
    if reference.labels and prediction.get("labels") is not None:
        hits = [prediction["labels"][e["prediction_index"]] == reference.labels[e["reference_index"]]
                for e in scores["per_example"] if e["prediction_index"] >= 0]
        scores["mean"]["label_accuracy"] = sum(hits) / len(reference.labels)
    return scores


def read_reference(path: str) -> Reference:
    from ..io import read_text, split_lines

    lines = [ln.strip() for ln in split_lines(read_text(path, "reference file")) if ln.strip()]
    if not lines:
        raise InputError(f"reference file {path} holds no sentence")
    return Reference(modality="text", texts=lines)


MODALITIES.register("text")(Modality("text", load_target, check, score, read_reference,
                                     declared_shapes=declared_shapes))
