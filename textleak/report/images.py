"""Pictures of an image recovery: the DLG-figure grid and the recovered images themselves.

`image_grid(result, reference, path)`: one row per image of the batch; the ground truth first,
then the reconstruction at each snapshot iteration (`MatchConfig.snapshot_at`), as in Zhu et
al.'s figures. `save_images(result, path)`: the final reconstruction at the model's resolution
(`path` for one image, `<stem>-<i><suffix>` for each image of a batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..io import PNG_MARK, check_outputs, write_files, write_output
from ..threat import Reference

IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _hwc(image: Any) -> np.ndarray:
    """[C, H, W] in [0, 1] -> [H, W] (grey) or [H, W, 3] for display and saving."""
    arr = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def _reference_images(reference: Reference | str | Path | None, shape: Sequence[int]) -> list[np.ndarray]:
    if reference is None:
        return []
    if not isinstance(reference, Reference):
        path = Path(reference)
        if path.suffix == ".json":
            reference = Reference.load(path)
        else:
            from ..image.modality import read_reference

            reference = read_reference(str(path))
    if not reference.images:
        raise InputError("the reference holds no image")
    import torch

    from ..image.data import fit_image

    return [fit_image(torch.as_tensor(np.asarray(im, dtype=np.float32)), shape, source=f"reference image {i}")
            .numpy() for i, im in enumerate(reference.images)]


def _order(result, refs: list[np.ndarray], preds: list[np.ndarray]) -> list[tuple[int, int]]:
    """(reference index or -1, prediction index) per row, using the result's scoring pairing."""
    if not refs:
        return [(-1, p) for p in range(len(preds))]
    pairs = [(e["reference_index"], e["prediction_index"]) for e in (result.metrics or {}).get("per_example", [])]
    if len(pairs) != len(refs):
        from ..image.metrics import match_images

        pairs = [(r, p) for r, p in enumerate(match_images(preds, refs))]
    used = {p for _, p in pairs}
    return pairs + [(-1, p) for p in range(len(preds)) if p not in used]


def image_grid(result, reference: Reference | str | Path | None = None, path: str | Path | None = None, *,
               max_columns: int = 8, cell: float = 1.2, overwrite: bool = False):
    """Draw (and write to `path` as PNG, if given) ground truth beside the reconstruction over
    iterations; returns the matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "images" not in result.prediction:
        raise InputError(f"the result holds no images (modality {result.modality})")
    shape = result.prediction.get("shape") or list(np.asarray(result.prediction["images"][0]).shape)
    preds = [np.asarray(im) for im in result.prediction["images"]]
    snaps = [s for s in result.snapshots if "images" in s] or [{"step": len(result.history), **result.prediction}]
    if len(snaps) > max_columns:  # keep the first and last, spread the rest evenly
        keep = np.linspace(0, len(snaps) - 1, max_columns).round().astype(int)
        snaps = [snaps[i] for i in sorted(set(keep.tolist()))]
    refs = _reference_images(reference, shape)
    rows = _order(result, refs, preds)
    ncols = len(snaps) + (1 if refs else 0)
    fig = Figure(figsize=(cell * ncols, cell * len(rows) + 0.4))
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(rows), ncols, squeeze=False))
    labels = result.prediction.get("labels") or []
    for r, (ref_i, pred_i) in enumerate(rows):
        col = 0
        if refs:
            ax = axes[r, 0]
            if ref_i >= 0:
                ax.imshow(_hwc(refs[ref_i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title("ground truth", fontsize=8)
            col = 1
        for s in snaps:
            ax = axes[r, col]
            ax.imshow(_hwc(s["images"][pred_i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(f"iter {s.get('step')}", fontsize=8)
            col += 1
        if pred_i < len(labels):
            axes[r, -1].set_xlabel(f"label {labels[pred_i]}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{result.method} on {result.model.get('name')}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        write_output(path, "image", lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=PNG_MARK),
                     overwrite=overwrite)
    return fig


def save_images(result, path: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the recovered images (8-bit, the model's resolution); returns the paths written."""
    files = image_files(result, path)
    check_outputs([(p, "image", "recovered image") for p, _ in files], overwrite=overwrite, folders_exist=False)
    write_files(files)
    return [p for p, _ in files]


def image_files(result, path: str | Path) -> list[tuple[Path, Any]]:
    """(path, writer) of each recovered image: `path`, or `<stem>-<i><suffix>` for a batch."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    images = result.prediction.get("images")
    if not images:
        raise InputError(f"the result holds no images (modality {result.modality})")
    if path.suffix.lower() not in IMAGE_OUTPUTS:
        raise InputError(f"cannot write an image as {path.suffix or 'a file without suffix'}; "
                         f"use one of {', '.join(IMAGE_OUTPUTS)}")
    paths = [path] if len(images) == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}")
                                             for i in range(len(images))]
    fmt = Image.registered_extensions()[path.suffix.lower()]
    mark = {}
    if fmt == "PNG":
        mark["pnginfo"] = PngInfo()
        for k, v in PNG_MARK.items():
            mark["pnginfo"].add_text(k, v)
    files = []
    for im, p in zip(images, paths):
        pixels = Image.fromarray((_hwc(im) * 255).round().astype(np.uint8))
        files.append((p, lambda tmp, px=pixels: px.save(tmp, format=fmt, **mark)))
    return files
