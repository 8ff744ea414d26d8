"""The image modality's hooks for `recover`: model rebuilding, compatibility check, scoring."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..gradients import check_parameters
from ..errors import InputError, ModelMismatchError
from .metrics import match_images, mse, psnr, ssim
from ..modalities import MODALITIES, Modality
from ..threat import Reference
from .data import fit_image, read_images
from .models import IMAGE_MODELS, ImageTarget, load_image_model, target_from_module

#: a recovery counts as successful below this MSE on [0, 1] images (the iDLG paper's criterion)
SUCCESS_MSE = 1e-3


def load_target(model: Any, metadata: Mapping[str, Any]) -> ImageTarget:
    spec = metadata["model"]
    shape = spec.get("input_shape") or [3, 32, 32]
    if model is not None and not isinstance(model, (str, Path)):
        if isinstance(model, ImageTarget):
            return model
        if not isinstance(model, torch.nn.Module):
            raise ModelMismatchError("the gradient file is from an image model; pass an image classifier "
                                     f"(a name in {', '.join(IMAGE_MODELS.names())} or a torch.nn.Module)")
        return target_from_module(model, shape, num_classes=spec.get("num_labels"), mean=spec.get("mean"),
                                  std=spec.get("std"), name=spec.get("name"))
    name = str(model) if model is not None else spec.get("name")
    if name not in IMAGE_MODELS:
        if model is None:
            raise InputError(f"the gradient file came from the model object {name!r}; "
                             "pass the same module through the Python API")
        raise ModelMismatchError(f"the gradient file is from an image model ({spec.get('name')}); {name!r} is not "
                                 f"an image model (choose one of: {', '.join(IMAGE_MODELS.names())})")
    if spec.get("init_seed", -1) < 0:
        raise InputError("the gradient file came from a model object; pass the same module through the Python API")
    return load_image_model(name, num_classes=int(spec["num_labels"]), channels=int(shape[0]), size=int(shape[1]),
                            init_seed=int(spec["init_seed"]), mean=spec.get("mean"), std=spec.get("std"))


def check(target: ImageTarget, metadata: Mapping[str, Any], gradients: Mapping[str, torch.Tensor]) -> None:
    if metadata.get("modality") != "image":
        raise ModelMismatchError(f"the gradient file is from a {metadata.get('modality')} model, not an image model")
    recorded = metadata["model"]
    if recorded.get("config_hash") != target.spec.config_hash:
        raise ModelMismatchError(f"the gradient file was made with another model ({recorded.get('name')}, "
                                 f"input {recorded.get('input_shape')}, {recorded.get('num_labels')} classes)")
    check_parameters(gradients, target.model)
    if recorded.get("weights_hash") not in (None, target.spec.weights_hash):
        seeds = (f"init seed {target.spec.init_seed}, the victim's was {recorded.get('init_seed')}"
                 if recorded.get("init_seed") not in (None, target.spec.init_seed)
                 else f"same init seed {target.spec.init_seed}: other weights")
        raise ModelMismatchError(f"the model's weights differ from the victim's ({seeds})")
    for key in ("mean", "std"):
        if recorded.get(key) is not None and [float(v) for v in recorded[key]] != list(getattr(target.spec, key)):
            raise ModelMismatchError(f"the model's input normalisation differs from the victim's ({key})")


def score(prediction: Mapping[str, Any], reference: Reference, target: ImageTarget) -> dict:
    """MSE, PSNR and SSIM on [0, 1] pixels (references fitted to the model's input), and label
    accuracy; batch predictions are paired with references to minimise the total MSE."""
    if not reference.images:
        raise InputError("the reference holds no image")
    preds = [np.asarray(im, dtype=np.float64) for im in prediction["images"]]
    refs = [fit_image(torch.as_tensor(np.asarray(im, dtype=np.float32)), target.input_shape,
                      source=f"reference image {i}").double().numpy() for i, im in enumerate(reference.images)]
    pairing = match_images(preds, refs)
    with_ssim = min(target.input_shape[1:]) >= 11
    per_example = []
    for r, p in enumerate(pairing):
        if p < 0:
            continue
        e: dict[str, Any] = {"reference_index": r, "prediction_index": p, "mse": mse(preds[p], refs[r]),
                             "psnr": psnr(preds[p], refs[r])}
        if with_ssim:
            e["ssim"] = ssim(preds[p], refs[r])
        if reference.labels and prediction.get("labels") is not None:
            e["label_correct"] = int(prediction["labels"][p]) == int(reference.labels[r])
        per_example.append(e)
    n = len(refs)
    mean: dict[str, float] = {
        "mse": sum(e["mse"] for e in per_example) / n,
        "psnr": sum(e["psnr"] for e in per_example) / n,
        "recovered_share": sum(e["mse"] < SUCCESS_MSE for e in per_example) / n,
    }
    if with_ssim:
        mean["ssim"] = sum(e["ssim"] for e in per_example) / n
    if per_example and "label_correct" in per_example[0]:
        mean["label_accuracy"] = sum(e["label_correct"] for e in per_example) / n
    return {"per_example": per_example, "mean": mean, "success_mse": SUCCESS_MSE,
            "psnr_finite": all(math.isfinite(e["psnr"]) for e in per_example)}


def declared_shapes(metadata: Mapping[str, Any]) -> dict[str, tuple] | None:
    """The registered model the file names, built on the meta device; None for a user module."""
    spec = metadata["model"]
    if spec.get("name") not in IMAGE_MODELS or spec.get("init_seed", 0) < 0:
        return None
    channels, size, _ = spec.get("input_shape") or [3, 32, 32]
    with torch.device("meta"):
        model = IMAGE_MODELS.get(spec["name"])(channels, size, spec["num_labels"])
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def read_reference(path: str) -> Reference:
    """An image file or a folder of them (labels unknown)."""
    found = read_images(path)
    return Reference(modality="image", images=list(found.images), labels=[], extra={"sources": found.names})


MODALITIES.register("image")(Modality("image", load_target, check, score, read_reference,
                                      declared_shapes=declared_shapes))
