"""The gradient file: name-keyed tensors plus JSON metadata, versioned, validated whole, safe to load.

Two encodings with the same content:
- `*.safetensors`: tensors by parameter name; metadata JSON under the header key "textleak".
- anything else (e.g. `grads.pt`): the archive `torch.save` writes, of a dict holding only
  strings and tensors, read back with `torch.load(weights_only=True)`, so no arbitrary object is
  ever unpickled.

Loading reads the file's header first and checks everything it declares before a tensor's data
is read or a model is built (`load_gradients`):
1. the container: a safetensors header of at most 16 MiB; or a zip archive whose records are
   stored uncompressed (as `torch.save` writes them: a tensor can then never claim more bytes
   than the file holds, and nothing is ever decompressed), with a pickle of at most 16 MiB,
   read first on the meta device (shapes and dtypes only, no data);
2. the metadata, whole (`schema.check_metadata`): types, ranges, sizes against each other;
3. the tensor table: dense, contiguous, floating point (float16/bfloat16/float32/float64), no
   shared storage, at most `max_gradient_bytes()` in all, and a classification head's
   `num_labels` must be the size of some shared gradient's dimension;
4. the tensors against the model the file names, built on the meta device (no memory): every
   gradient must name one of its parameters, with its shape. (Skipped, with the rest still
   checked, when that model is not available here.)
Only then are the tensors read, and checked to be finite. Every failure is one line.

Metadata (a JSON object):
    format, version          "textleak.gradients", FORMAT_VERSION
    modality                 "text" | "image"
    model                    {name, family, task, num_labels, head_seed, config_hash, weights_hash}
    knowledge                `threat.Knowledge` as a dict: what the attacker is declared to know
    capture                  how the gradient was made (source, loss reduction, mode, clipping...)
    versions, created        library versions and UTC time of capture
    extra                    modality-specific facts (image shape and normalisation, ...)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from . import containers
from .errors import GradientFileError, ModelMismatchError
from .io import as_path, write_output
from .schema import check_metadata, parse_json

FORMAT = "textleak.gradients"
FORMAT_VERSION = 1
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEFAULT_MAX_BYTES = 4 * 2**30


def max_gradient_bytes() -> int:
    """Most tensor bytes a gradient file may hold ($TEXTLEAK_MAX_GRADIENT_BYTES, default 4 GiB)."""
    try:
        return int(os.environ.get("TEXTLEAK_MAX_GRADIENT_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


@dataclass
class GradientFile:
    gradients: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        return save_gradients(path, self, overwrite=overwrite)


def _stamp(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {**metadata, "format": FORMAT, "version": FORMAT_VERSION}


def check_gradient_file(grads: Any, source: str = "the gradients") -> GradientFile:
    """Validate an in-memory GradientFile as a loaded one is; returns it."""
    if not isinstance(grads, GradientFile):
        raise GradientFileError(f"expected a GradientFile or a path to one, got {type(grads).__name__}")
    if not isinstance(grads.gradients, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in grads.gradients.items()):
        raise GradientFileError(f"{source}: gradients must map parameter names to tensors")
    if not isinstance(grads.metadata, Mapping):
        raise GradientFileError(f"{source}: metadata must be a dict")
    metadata = check_metadata(json.loads(json.dumps(_stamp(grads.metadata), default=str)), source,
                              error=GradientFileError)
    # In memory a view costs nothing more; only a file's views are refused (they could claim a
    # larger storage than the tensor), and the writer saves plain copies.
    infos = {k: replace(containers.TensorInfo.of(v), plain=True) for k, v in grads.gradients.items()}
    check_table(infos, metadata, source)
    check_finite(grads.gradients, source=source)
    return grads


def save_gradients(path: str | Path, grads: GradientFile, *, overwrite: bool = False) -> Path:
    """Write `grads` (validated first) under the output rule of `textleak.io`."""
    path = as_path(path, "gradient file")
    return write_output(path, "gradients", gradient_writer(path, grads), overwrite=overwrite)


def gradient_writer(path: Path, grads: GradientFile):
    """`write(tmp_path)` for `grads` in the encoding `path`'s suffix names (validated first)."""
    check_gradient_file(grads, "the gradients to save")
    meta = json.dumps(_stamp(grads.metadata), sort_keys=True)
    tensors = {k: _plain(v.detach().cpu()) for k, v in grads.gradients.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return lambda tmp: save_file(tensors, tmp, metadata={"textleak": meta})
    payload = {"format": FORMAT, "metadata": meta, "gradients": tensors}
    return lambda tmp: torch.save(payload, tmp)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """`t` alone in a storage of exactly its size (torch.save would otherwise save the whole storage)."""
    return t if containers.TensorInfo.of(t).plain else t.clone(memory_format=torch.contiguous_format)


def load_gradients(path: str | Path) -> GradientFile:
    """Load and validate a gradient file; every failure is a one-line GradientFileError."""
    path = as_path(path, "gradient file")
    if not path.exists():
        raise GradientFileError(f"gradient file {path} does not exist")
    if not path.is_file():
        raise GradientFileError(f"gradient file {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise GradientFileError(f"gradient file {path} is empty")
    header = containers.read_header(path)
    metadata = check_metadata(parse_json(header.metadata, f"{path}: metadata", error=GradientFileError),
                              str(path), error=GradientFileError)
    check_table(header.tensors, metadata, str(path), limit=min(max_gradient_bytes(), size))
    check_declared_model(header.tensors, metadata, str(path))
    tensors = header.read()
    if {k: containers.TensorInfo.of(v) for k, v in tensors.items()} != header.tensors:
        raise GradientFileError(f"{path} changed while it was read, or its tensors differ from its header")
    check_finite(tensors, source=str(path))
    return GradientFile(gradients=tensors, metadata=metadata)


def is_gradient_file(path: str | Path) -> bool:
    """Whether `path` is a textleak gradient file (its header only is read)."""
    try:
        meta = json.loads(containers.read_header(Path(path)).metadata)
    except Exception:  # unreadable in any way: not a gradient file
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def check_table(tensors: Mapping[str, "containers.TensorInfo"], metadata: Mapping[str, Any], source: str,
                *, limit: int | None = None) -> None:
    """What the tensors may be, from their header alone: see the module docstring, step 3."""
    if not tensors:
        raise GradientFileError(f"{source} holds no gradients")
    for name, info in tensors.items():
        if not isinstance(name, str) or not name or len(name) > 1024:
            raise GradientFileError(f"{source}: a gradient has the name {name!r:.80}; names are parameter names")
        problem = info.problem(FLOAT_DTYPES)
        if problem:
            raise GradientFileError(f"{source}: gradient {name} {problem}")
    total = sum(info.nbytes for info in tensors.values())
    limit = max_gradient_bytes() if limit is None else limit
    if total > limit:
        raise GradientFileError(f"{source}: its tensors claim {total} bytes, more than the {limit} it may hold "
                                "(TEXTLEAK_MAX_GRADIENT_BYTES)")
    classes = metadata["model"].get("num_labels")
    if classes and metadata["model"].get("task") == "classify":
        dims = {d for info in tensors.values() for d in info.shape}
        if classes not in dims:
            raise GradientFileError(f"{source}: the metadata declares {classes} classes, but no shared gradient has "
                                    "a dimension of that size (the classifier's would)")


def check_declared_model(tensors: Mapping[str, "containers.TensorInfo"], metadata: Mapping[str, Any],
                         source: str) -> None:
    """Every gradient names a parameter of the model the file names, with its shape (meta device)."""
    from .modalities import modality

    shapes = modality(metadata["modality"]).declared_shapes(metadata)
    if shapes is None:  # that model is not available here: the attacker's model is checked later
        return
    name = metadata["model"].get("name")
    for key, info in tensors.items():
        if key not in shapes:
            raise ModelMismatchError(f"{source}: gradient {key!r} names no parameter of {name}")
        if tuple(shapes[key]) != info.shape:
            raise ModelMismatchError(f"{source}: gradient {key} has shape {info.shape}; in {name} "
                                     f"(as the metadata declares it) that parameter's is {tuple(shapes[key])}")


def check_finite(tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    bad = [name for name, t in tensors.items() if t.is_floating_point() and t.numel() and not _finite(t)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise GradientFileError(f"{source} has NaN or infinite values in {bad[0]}{more}")


def _finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite: its least and largest are (a NaN anywhere makes both NaN), two
    reductions without the [numel] mask `isfinite` builds (0.008 against 0.09 CPU s at MiniLM's table)."""
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def gradient_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def check_parameters(gradients: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every shared gradient must name a parameter of `model` with the same shape."""
    params = dict(model.named_parameters())
    unknown = [n for n in gradients if n not in params]
    if unknown:
        raise ModelMismatchError(f"the gradient file has parameter {unknown[0]!r} that the model lacks")
    wrong = [n for n, g in gradients.items() if tuple(g.shape) != tuple(params[n].shape)]
    if wrong:
        raise ModelMismatchError(f"gradient of {wrong[0]} has shape {tuple(gradients[wrong[0]].shape)}, "
                                 f"the model's is {tuple(params[wrong[0]].shape)}")
