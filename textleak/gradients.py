"""The gradient file: name-keyed tensors plus JSON metadata, versioned, safe to load.

Two encodings with the same content:
- `*.safetensors`: tensors by parameter name; metadata JSON under the header key "textleak".
- anything else (e.g. `grads.pt`): `torch.save` of a dict holding only strings and tensors,
  read back with `torch.load(weights_only=True)`, so no arbitrary object is ever unpickled.

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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import GradientFileError, ModelMismatchError
from .io import atomic_write

FORMAT = "textleak.gradients"
FORMAT_VERSION = 1


@dataclass
class GradientFile:
    gradients: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    @property
    def modality(self) -> str:
        return self.metadata["modality"]

    def save(self, path: str | Path) -> Path:
        return save_gradients(path, self)


def _stamp(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {**metadata, "format": FORMAT, "version": FORMAT_VERSION}


def save_gradients(path: str | Path, grads: GradientFile) -> Path:
    path = Path(path)
    check_finite(grads.gradients, source="the gradients to save")
    meta = json.dumps(_stamp(grads.metadata), sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in grads.gradients.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"textleak": meta}))
    else:
        payload = {"format": FORMAT, "metadata": meta, "gradients": tensors}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_gradients(path: str | Path) -> GradientFile:
    """Load and validate a gradient file; every failure is a one-line GradientFileError."""
    path = Path(path)
    if not path.is_file():
        raise GradientFileError(f"gradient file {path} does not exist")
    if path.stat().st_size == 0:
        raise GradientFileError(f"gradient file {path} is empty")
    tensors, meta_json = (_load_safetensors if _is_safetensors(path) else _load_torch)(path)
    try:
        metadata = json.loads(meta_json)
    except (TypeError, json.JSONDecodeError):
        raise GradientFileError(f"{path}: metadata is not valid JSON") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise GradientFileError(f"{path} is not a textleak gradient file")
    if metadata.get("version") != FORMAT_VERSION:
        raise GradientFileError(
            f"{path} has gradient format version {metadata.get('version')}; "
            f"this textleak reads version {FORMAT_VERSION}"
        )
    for key in ("modality", "model", "knowledge"):
        if key not in metadata:
            raise GradientFileError(f"{path}: metadata lacks {key!r}")
    if not tensors:
        raise GradientFileError(f"{path} holds no gradients")
    check_finite(tensors, source=str(path))
    return GradientFile(gradients=tensors, metadata=metadata)


def check_finite(tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise GradientFileError(f"{source} has NaN or infinite values in {bad[0]}{more}")


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then '{'.
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = (fh.metadata() or {}).get("textleak")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise GradientFileError(f"{path} is not a readable safetensors file ({_short(exc)})") from None
    if meta is None:
        raise GradientFileError(f"{path} is a safetensors file without textleak metadata")
    return tensors, meta


def _load_torch(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = "it holds pickled objects that are unsafe to load" if "weights_only" in str(exc) \
            or "Unsupported global" in str(exc) else f"corrupt or truncated: {_short(exc)}"
        raise GradientFileError(f"cannot load {path}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GradientFileError(f"{path} is not a textleak gradient file")
    grads = payload.get("gradients")
    if not isinstance(grads, dict) or not all(isinstance(v, torch.Tensor) for v in grads.values()):
        raise GradientFileError(f"{path}: 'gradients' must map parameter names to tensors")
    return grads, payload.get("metadata")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


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
