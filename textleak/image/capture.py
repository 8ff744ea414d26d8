"""The victim side for images: the gradient of one training step on a batch of pictures.

`capture_image_gradients(model, images, labels=...)` returns the same `Capture` as text
(a `GradientFile` for the attacker and a `Reference` kept apart for scoring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..capture import Capture
from ..capturing import CaptureBuilder, TrainingStep, check_declared, dropout_rates, step_gradients
from ..core.device import on_device, resolve_device
from ..errors import InputError
from ..threat import Reference
from .data import LabelledImages, as_image, fit_image, read_images
from .models import ImageTarget, load_image_model, target_from_module

#: facts about an image batch an attacker may be declared to know
IMAGE_FACTS = ("batch_size", "labels")
DEFAULT_IMAGE_DECLARED = ("batch_size",)


def image_target(model: Any = None, *, num_classes: int | None = None, channels: int | None = None,
                 size: int | None = None, init_seed: int = 0, input_shape: Sequence[int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ImageTarget:
    """A registered name (default lenet), an `ImageTarget`, or a user nn.Module (needs input_shape)."""
    if isinstance(model, ImageTarget):
        return model
    if model is None or isinstance(model, str):
        return load_image_model(model, num_classes=num_classes or 100, channels=channels or 3,
                                size=size or 32, init_seed=init_seed, mean=mean, std=std)
    if input_shape is None:
        raise InputError("pass input_shape=(C, H, W) with a model object")
    return target_from_module(model, input_shape, num_classes=num_classes, mean=mean, std=std)


def collect_images(images: Any) -> LabelledImages:
    """Paths (files or folders), LabelledImages, a tensor [B, C, H, W] or [C, H, W], or a list of arrays."""
    if isinstance(images, LabelledImages):
        return images
    if isinstance(images, (str, Path)):
        return read_images(images)
    if torch.is_tensor(images) and images.ndim == 4:
        images = list(images)
    elif torch.is_tensor(images) or (hasattr(images, "ndim") and not isinstance(images, (list, tuple))):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise InputError("no image given")
    out = LabelledImages([], [], [])
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            out = out + read_images(item)
        else:
            out = out + LabelledImages([as_image(item, source=f"image {i}")], [None], [f"image {i}"])
    return out


def capture_image_gradients(model: Any = None, images: Any = None, *, labels: Sequence[int] | None = None,
                            num_classes: int | None = None, channels: int | None = None,
                            size: int | None = None, init_seed: int = 0,
                            input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                            std: Sequence[float] | None = None,
                            declare: Iterable[str] = DEFAULT_IMAGE_DECLARED, defence: Any = None,
                            step: TrainingStep | None = None, seed: int = 0, device: Any = "auto") -> Capture:
    """Gradient of the mean cross-entropy of `model` on `images` with `labels`.

    model: a name in IMAGE_MODELS (None: lenet, 3x32x32, 100 classes), an ImageTarget, or an nn.Module
        with `input_shape`. images: see `collect_images`; each is centre-cropped, resized and
        (grey) replicated to the model's input, then normalised with `mean`/`std`.
    labels: one class per image; default: the source's labels, else 0. declare: facts the
        attacker is assumed to know, among batch_size and labels. defence: as for text
        (`capture_gradients`). seed: draws the defence's randomness and train-mode dropout.
        step: the training protocol (`TrainingStep`; default eval, float32, unclipped).
        device: "auto", "cpu", "cuda" or "cuda:N" (the model is moved there for the step and
        back; gradients come back on the CPU).
    """
    from ..validate import integer, labels as check_labels

    labels = check_labels(labels)
    seed = integer(seed, "seed")
    check_declared(declare)
    device = resolve_device(device)
    step = step or TrainingStep()
    target = image_target(model, num_classes=num_classes, channels=channels, size=size, init_seed=init_seed,
                          input_shape=input_shape, mean=mean, std=std)
    batch = collect_images(images)
    if len(batch) == 0:
        raise InputError("no image given")
    chosen, label_source = _labels(batch, labels, target.num_classes)
    pixels = torch.stack([fit_image(im, target.input_shape, source=name)
                          for im, name in zip(batch.images, batch.names)])
    inputs, y = target.normalise(pixels).to(device), torch.tensor(chosen, device=device)

    def loss_of(rows: Sequence[int]) -> torch.Tensor:
        rows = list(rows)
        return F.cross_entropy(target.model(inputs[rows]), y[rows])

    if defence is not None:
        from ..defences import parse_defence

        defence = parse_defence(defence)
    with on_device(target.model, device):
        grads, loss, clipped = step_gradients(target.model, loss_of, len(chosen), step=step, defence=defence,
                                              seed=seed)
    spec = target.spec
    builder = CaptureBuilder(
        "image", "capture_image_gradients", spec.to_dict(), {"batch_size": len(chosen), "labels": chosen},
        declare=[d for d in declare if d in IMAGE_FACTS], step=step, dropout=dropout_rates(target.model),
        clipped=clipped, defence=defence,
        victim={"label_source": label_source, "loss_value": loss, "seed": seed},
        extra={"input_shape": list(spec.input_shape), "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
               "pixel_range": [0.0, 1.0]})
    reference = Reference(modality="image", labels=chosen, images=[p for p in pixels],
                          extra={"sources": list(batch.names)})
    return builder.build(grads, reference)


def _labels(batch: LabelledImages, labels: Sequence[int] | None, num_classes: int) -> tuple[list[int], str]:
    """One class per image (given, else the source's, else 0) and where they came from."""
    if labels is not None:
        if len(labels) != len(batch):
            raise InputError(f"{len(labels)} labels for {len(batch)} images")
        chosen, source = [int(y) for y in labels], "given"
    else:
        chosen = [0 if y is None else int(y) for y in batch.labels]
        source = "the images' source" if all(y is not None for y in batch.labels) else "default 0"
    bad = [y for y in chosen if not 0 <= y < num_classes]
    if bad:
        raise InputError(f"label {bad[0]} is outside the model's classes 0..{num_classes - 1}")
    return chosen, source
