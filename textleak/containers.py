"""Reading a gradient file's container header without reading its tensors' data.

`read_header(path)` returns the metadata JSON string and, per tensor, its dtype, shape, byte
size and layout (`TensorInfo`), plus a `read()` that loads the tensors themselves once the
caller has checked the header. `.safetensors` headers come from `safetensors.safe_open`
(lazy: shapes without data); a `torch.save` archive is inspected with `zipfile` (record
sizes and compression), then its pickle is read with `torch.load(map_location="meta",
weights_only=True)`, which gives shapes and dtypes and never reads a storage.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import GradientFileError

MAX_HEADER_BYTES = 16 * 2**20  # a safetensors JSON header
MAX_PICKLE_BYTES = 16 * 2**20  # a .pt archive's data.pkl
#: safetensors dtype codes -> torch's names (for messages and sizes; only the float ones are accepted)
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
                       "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16",
                       "U32": "uint32", "U64": "uint64", "BOOL": "bool", "C64": "complex64", "C128": "complex128",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # torch's name, e.g. "float32", or the file's for a type torch lacks
    shape: tuple[int, ...]
    nbytes: int  # bytes of the tensor's own data
    layout: str = "strided"
    plain: bool = True  # contiguous, at offset 0, alone in a storage of exactly its size

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorInfo":
        layout = str(t.layout).removeprefix("torch.")
        if layout != "strided":
            return cls(str(t.dtype).removeprefix("torch."), tuple(t.shape), 0, layout, False)
        nbytes = t.numel() * t.element_size()
        plain = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == nbytes
        return cls(str(t.dtype).removeprefix("torch."), tuple(int(d) for d in t.shape), nbytes, layout, plain)

    def problem(self, allowed: tuple[torch.dtype, ...]) -> str | None:
        """Why this cannot be a shared gradient, or None."""
        if self.layout != "strided":
            return f"is a {self.layout} tensor; gradient files hold dense tensors"
        if self.dtype not in {str(d).removeprefix("torch.") for d in allowed}:
            return f"is {self.dtype}; gradients are floating point (float16, bfloat16, float32 or float64)"
        if not self.shape or 0 in self.shape or len(self.shape) > 8:
            return f"has shape {self.shape}; a parameter's gradient has 1 to 8 non-empty dimensions"
        if not self.plain:
            return "is a view into a larger or shared storage; gradient files hold plain contiguous tensors"
        return None


@dataclass
class Header:
    metadata: str
    tensors: dict[str, TensorInfo]
    read: Callable[[], dict[str, torch.Tensor]]


def read_header(path: Path) -> Header:
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path):
        return _safetensors_header(path)
    return _torch_header(path, head)


# -- safetensors -----------------------------------------------------------------------------------
def _safetensors_header(path: Path) -> Header:
    from safetensors import SafetensorError, safe_open

    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    if length > MAX_HEADER_BYTES or length + 8 > path.stat().st_size:
        raise GradientFileError(f"{path} is not a textleak gradient file: not a readable safetensors file "
                                f"(header of {length} bytes)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = (fh.metadata() or {}).get("textleak")
            table = {}
            for key in fh.keys():
                part = fh.get_slice(key)
                code, shape = part.get_dtype(), tuple(int(d) for d in part.get_shape())
                name = _SAFETENSORS_DTYPES.get(code, code)
                dtype = getattr(torch, name, None)
                numel = 1
                for d in shape:
                    numel *= d
                table[key] = TensorInfo(name, shape, numel * (dtype.itemsize if isinstance(dtype, torch.dtype) else 1))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GradientFileError(f"{path} is not a textleak gradient file: not a readable safetensors file "
                                f"({_short(exc)})") from None
    if meta is None:
        raise GradientFileError(f"{path} is a safetensors file without textleak metadata")

    def read() -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise GradientFileError(f"{path} is not a readable safetensors file ({_short(exc)})") from None

    return Header(meta, table, read)


# -- torch.save archives ---------------------------------------------------------------------------
def _torch_header(path: Path, head: bytes) -> Header:
    _check_archive(path, head)
    payload = _torch_load(path, "meta")
    meta, grads = _payload(path, payload)
    table = {k: TensorInfo.of(v) for k, v in grads.items()}
    return Header(meta, table, lambda: _payload(path, _torch_load(path, "cpu"))[1])


def _check_archive(path: Path, head: bytes) -> None:
    """A zip archive of stored (uncompressed) records, as torch.save writes; nothing is inflated."""
    if not head.startswith(b"PK"):
        raise GradientFileError(f"{path} is not a textleak gradient file (neither a torch.save archive nor "
                                "safetensors)")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise GradientFileError(f"cannot load {path}: corrupt or truncated archive ({_short(exc)})") from None
    size = path.stat().st_size
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED:
            raise GradientFileError(f"cannot load {path}: record {r.filename} is compressed; torch.save stores "
                                    "records uncompressed, and textleak never inflates one")
        if r.file_size > size:
            raise GradientFileError(f"cannot load {path}: record {r.filename} claims {r.file_size} bytes, "
                                    f"more than the file's {size}")
    pickles = [r for r in records if r.filename.endswith("data.pkl")]
    if len(pickles) != 1:
        raise GradientFileError(f"cannot load {path}: not a torch.save archive ({len(pickles)} data.pkl records)")
    if pickles[0].file_size > MAX_PICKLE_BYTES:
        raise GradientFileError(f"cannot load {path}: its pickle is {pickles[0].file_size} bytes; "
                                f"a gradient file's is far below {MAX_PICKLE_BYTES}")


def _torch_load(path: Path, device: str):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe archives
        text = str(exc)
        if "Unsupported global" in text:
            reason = "it holds pickled objects that are unsafe to load (only tensors and strings are read)"
        else:
            reason = f"corrupt or truncated: {_short(exc)}"
        raise GradientFileError(f"cannot load {path}: {reason}") from None


def _payload(path: Path, payload) -> tuple[str, dict[str, torch.Tensor]]:
    if not isinstance(payload, dict) or payload.get("format") != "textleak.gradients":
        raise GradientFileError(f"{path} is not a textleak gradient file")
    extra = sorted(str(k) for k in payload if k not in ("format", "metadata", "gradients"))
    if extra:
        raise GradientFileError(f"{path}: unexpected entry {extra[0]!r:.60} beside format, metadata and gradients")
    grads = payload.get("gradients")
    if not isinstance(grads, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in grads.items()):
        raise GradientFileError(f"{path}: 'gradients' must map parameter names to tensors")
    if not isinstance(payload.get("metadata"), str):
        raise GradientFileError(f"{path}: 'metadata' must be a JSON string")
    return payload["metadata"], dict(grads)


def _short(exc: BaseException) -> str:
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()[:160]
    return type(exc).__name__
