"""Real images, offline: files and folders (PNG/JPEG...), scikit-learn's digits and sample photos,
and Hugging Face image datasets already in the local cache.

Every loader returns `LabelledImages`: float tensors [C, H, W] in [0, 1] at their own size, with
labels where the source has them. `fit_image` brings one to a model's (C, H, W): a centre crop to
the model's aspect ratio, an antialiased bilinear resize, and grey replicated to 3 channels.
Colour is never silently dropped: a colour image for a 1-channel model is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..registry import Registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class LabelledImages:
    images: list[torch.Tensor]  # [C, H, W] in [0, 1], any size
    labels: list[int | None]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def __add__(self, other: "LabelledImages") -> "LabelledImages":
        return LabelledImages(self.images + other.images, self.labels + other.labels, self.names + other.names)


def as_image(value: Any, *, source: str = "image") -> torch.Tensor:
    """A tensor/array [H, W] or [C, H, W] (float in [0, 1] or uint8) -> float32 [C, H, W]."""
    t = torch.as_tensor(np.array(value)) if not torch.is_tensor(value) else value.detach().cpu()
    if t.dtype == torch.uint8:
        t = t.float() / 255
    elif not t.is_floating_point():
        raise InputError(f"{source}: pixels must be floats in [0, 1] or uint8, got {t.dtype}")
    t = t.float()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"{source} has shape {tuple(t.shape)}; expected (H, W) or (C, H, W)")
    if t.shape[0] not in (1, 3) or min(t.shape[1:]) < 1:
        raise InputError(f"{source} has shape {tuple(t.shape)}: expected 1 (grey) or 3 (RGB) channels first")
    if not torch.isfinite(t).all():
        raise InputError(f"{source} has NaN or infinite pixels")
    if float(t.min()) < 0 or float(t.max()) > 1:
        raise InputError(f"{source}: pixel values must lie in [0, 1] (got {float(t.min()):.3g}..{float(t.max()):.3g})")
    return t


def fit_image(image: torch.Tensor, shape: Sequence[int], *, source: str = "image") -> torch.Tensor:
    """[c, h, w] in [0, 1] -> [C, H, W]: centre crop to the aspect ratio, resize, grey -> RGB."""
    C, H, W = (int(s) for s in shape)
    image = as_image(image, source=source)
    c, h, w = image.shape
    if c != C:
        if c == 1:
            image = image.expand(C, h, w)
        else:
            raise InputError(f"{source} has {c} channels but the model takes {C}; "
                             "pass a greyscale image or a model with 3 channels")
    if (h, w) != (H, W):
        # Largest centred window with the model's aspect ratio, then resize it.
        ch, cw = (h, round(h * W / H)) if w * H >= h * W else (round(w * H / W), w)
        ch, cw = max(1, min(ch, h)), max(1, min(cw, w))
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[:, top:top + ch, left:left + cw]
        image = F.interpolate(image[None], size=(H, W), mode="bilinear", align_corners=False,
                              antialias=(ch > H or cw > W))[0]
    return image.clamp(0, 1).contiguous()


def read_image_file(path: str | Path) -> torch.Tensor:
    """Decode a PNG/JPEG/... file to [1 or 3, H, W] in [0, 1]; alpha is dropped."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            im = im.convert("L" if grey else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {path}: not a readable image file ({type(exc).__name__})") from None
    return as_image(arr if arr.ndim == 2 else arr.transpose(2, 0, 1), source=str(path))


def read_images(path: str | Path) -> LabelledImages:
    """One image file, or every image file (by suffix, sorted by name) in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"folder {path} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files = [path]
    images = [read_image_file(f) for f in files]
    return LabelledImages(images, [None] * len(images), [str(f) for f in files])


# -- datasets --------------------------------------------------------------------------------
#: name -> loader(indices) -> LabelledImages
DATASETS: Registry[Callable[[Sequence[int]], LabelledImages]] = Registry("image dataset")


def _check_indices(indices: Sequence[int], size: int, name: str) -> list[int]:
    bad = [i for i in indices if not 0 <= int(i) < size]
    if bad:
        raise InputError(f"{name} has {size} images; index {bad[0]} is out of range")
    return [int(i) for i in indices]


@DATASETS.register("digits")
def digits(indices: Sequence[int]) -> LabelledImages:
    """scikit-learn's 1797 handwritten digits (8x8 grey, 17 levels), labels 0-9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = _check_indices(indices, len(data.images), "digits")
    return LabelledImages([torch.tensor(data.images[i] / 16.0, dtype=torch.float32)[None] for i in idx],
                          [int(data.target[i]) for i in idx], [f"digits[{i}]" for i in idx])


#: crop windows (fraction of height, fraction of width, side as fraction of height) on the photos
_CROP_SIDES = (0.3, 0.45, 0.6)
_CROP_GRID = 5


@DATASETS.register("sample-images")
def sample_images(indices: Sequence[int]) -> LabelledImages:
    """Square crops of scikit-learn's china.jpg and flower.jpg (427x640 RGB), no labels.

    Index i picks the photo (i % 2), the crop side (i // 2 % 3 of 30/45/60% of the height) and
    its position on a 5x5 grid; 150 distinct crops in all.
    """
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    total = 2 * len(_CROP_SIDES) * _CROP_GRID * _CROP_GRID
    out = []
    for i in _check_indices(indices, total, "sample-images"):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        side = int(h * _CROP_SIDES[(i // 2) % len(_CROP_SIDES)])
        cell = i // (2 * len(_CROP_SIDES))
        top = (h - side) * (cell // _CROP_GRID) // (_CROP_GRID - 1)
        left = (w - side) * (cell % _CROP_GRID) // (_CROP_GRID - 1)
        crop = photo[top:top + side, left:left + side].transpose(2, 0, 1)
        out.append(torch.tensor(crop, dtype=torch.float32) / 255)
    return LabelledImages(out, [None] * len(out), [f"sample-images[{i}]" for i in indices])


def hf_dataset(name: str, indices: Sequence[int], *, split: str | None = None) -> LabelledImages:
    """Images (and class labels) of a Hugging Face dataset in the local cache (e.g. cifar100) or a
    local image folder; `split` defaults to "test" where there is one, else the first split."""
    import datasets
    from datasets.features import ClassLabel
    from datasets.features import Image as ImageFeature

    try:
        splits = datasets.load_dataset(name)
        split = split or ("test" if "test" in splits else next(iter(splits)))
        ds = splits[split]
    except Exception as exc:  # offline misses and unknown names come as many exception types
        raise InputError(f"dataset {name!r} is not available offline: {str(exc).splitlines()[0][:160]}") from None
    image_col = next((k for k, f in ds.features.items() if isinstance(f, ImageFeature)), None)
    if image_col is None:
        raise InputError(f"dataset {name!r} has no image column")
    label_cols = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)]
    # cifar100 has coarse and fine labels; the fine ones are the classification task.
    label_col = next((k for k in label_cols if "fine" in k), label_cols[0] if label_cols else None)
    idx = _check_indices(indices, len(ds), name)
    images, labels = [], []
    for i in idx:
        row = ds[i]
        im = row[image_col].convert("L" if row[image_col].mode in ("1", "L", "LA", "I", "F") else "RGB")
        arr = np.asarray(im, dtype=np.uint8)
        images.append(as_image(arr if arr.ndim == 2 else arr.transpose(2, 0, 1), source=f"{name}[{i}]"))
        labels.append(int(row[label_col]) if label_col else None)
    return LabelledImages(images, labels, [f"{name}[{i}]" for i in idx])


def load_dataset_images(name: str, indices: Sequence[int]) -> LabelledImages:
    """`digits`, `sample-images`, or `hf:NAME` for a cached Hugging Face dataset."""
    if name.startswith("hf:"):
        return hf_dataset(name[3:], indices)
    return DATASETS.get(name)(indices)
