"""Files textleak reads and writes, under one rule for the CLI and the Python API.

Reading: `read_text` gives UTF-8 text or a one-line InputError (missing, a folder, unreadable, not
UTF-8); `split_lines` splits at newlines only (never at \\v, \\f or other Unicode separators).

Writing, the output rule:
1. An output is never one of the command's inputs (compared as files, links resolved), and no
   two outputs of one command share a path.
2. An existing file is replaced only when it holds an earlier textleak output of the same kind
   (gradient file, reference, result, report, checkpoint, PNG; recognised by its content), or
   when the user asked for it (`--overwrite`, `overwrite=True`). Nothing else is ever replaced.
3. The CLI checks all of a command's outputs (rules 1-2, and that each one's folder exists)
   before any work starts.
4. Every file is written to a temporary file in its folder and renamed over the target; a
   command with several files stages them all and renames them only once all are written. A
   failure leaves every earlier file as it was and no temporary file behind.
Results are JSON without NaN or Infinity (`dumps`): a non-finite number is written as null.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import InputError, OutputError

#: what each kind of output is called in messages
KINDS = {"gradients": "a textleak gradient file", "reference": "a textleak reference file",
         "result": "a textleak result", "report": "a textleak report", "checkpoint": "a textleak checkpoint",
         "image": "an image textleak wrote"}
PNG_MARK = {"Software": "textleak"}  # the text chunk textleak puts in every PNG it writes


# -- reading -------------------------------------------------------------------------------------
def as_path(value: Any, what: str) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip() and "\x00" not in value:
        return Path(value)
    raise InputError(f"{what} must be a file path, got {type(value).__name__} {value!r:.60}")


def read_bytes(path: str | Path, what: str) -> bytes:
    path = as_path(path, what)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_text(path: str | Path, what: str) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped), or a one-line InputError."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}); convert it, e.g. iconv -t UTF-8") from None


def split_lines(text: str) -> list[str]:
    """Lines split at \\n only (\\r\\n too); \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 stay inside a line."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


# -- JSON ----------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """`json.dumps(default=...)` for tensors, arrays, sets and tuples; anything else as text."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def finite(obj: Any) -> Any:
    """`obj` as plain JSON values, every NaN or infinite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [finite(v) for v in obj]
    return finite(jsonable(obj))


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (no NaN/Infinity) of results and records."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


# -- recognising textleak's own files -------------------------------------------------------------
_FORMAT = re.compile(rb'^\s*\{\s*"format"\s*:\s*"textleak\.(\w+)"')


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _json_kind(path: Path) -> str | None:
    m = _FORMAT.match(_head(path, 512))
    return m.group(1).decode() if m else None


def _is_report(path: Path) -> bool:
    head = _head(path).decode("utf-8", errors="replace")
    return head.startswith("# textleak") or 'name="generator" content="textleak"' in head \
        or "<title>textleak" in head


def _is_png(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == PNG_MARK["Software"]
    except Exception:  # not an image PIL can read: not ours
        return False


def is_kind(path: str | Path, kind: str) -> bool:
    """Whether the existing file `path` is an earlier textleak output of `kind`."""
    path = Path(path)
    if kind in ("result", "reference"):
        return _json_kind(path) == kind
    if kind == "report":
        return _is_report(path)
    if kind == "image":
        return _is_png(path)
    if kind == "gradients":
        from .gradients import is_gradient_file

        return is_gradient_file(path)
    if kind == "checkpoint":
        from .core.checkpoint import is_checkpoint

        return is_checkpoint(path)
    raise ValueError(f"unknown output kind {kind!r}")


# -- the output rule ----------------------------------------------------------------------------
def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_outputs(outputs: Sequence[tuple[str | Path, str, str]], inputs: Iterable[tuple[str | Path, str]] = (),
                  *, overwrite: bool = False, folders_exist: bool = True) -> None:
    """Rules 1-3 for (path, kind, what) outputs against (path, what) inputs; one-line OutputError."""
    inputs = [(Path(p), w) for p, w in inputs if p is not None]
    seen: list[tuple[Path, str]] = []
    for raw, kind, what in outputs:
        path = as_path(raw, what)
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; give a file name")
        for other, other_what in inputs:
            if same_file(path, other):
                raise OutputError(f"{what} {path} is the {other_what}; textleak never writes over an input")
        for other, other_what in seen:
            if same_file(path, other):
                raise OutputError(f"{what} and {other_what} both name {path}")
        seen.append((path, what))
        if folders_exist and not path.parent.is_dir():
            raise OutputError(f"{what} {path}: the folder {path.parent} does not exist")
        if path.exists() and not overwrite and not is_kind(path, kind):
            raise OutputError(f"{what} {path} exists and is not {KINDS[kind]}; choose another path, "
                              "or pass --overwrite to replace it")


def _stage(path: Path, write: Callable[[str], None]) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_files(items: Sequence[tuple[str | Path, Callable[[str], None]]], *, make_folders: bool = True) -> None:
    """Write every (path, write(tmp_path)) to a temporary file, then rename them all into place."""
    staged: list[tuple[str, Path]] = []
    path = None
    try:
        for raw, write in items:
            path = Path(raw)
            if make_folders:
                path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_stage(path, write), path))
        for tmp, path in staged:
            os.replace(tmp, path)
        staged = []
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_output(path: str | Path, kind: str, write: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """One user-named file under the output rule (the Python API's writers use this)."""
    path = as_path(path, "output")
    check_outputs([(path, kind, "output")], overwrite=overwrite, folders_exist=False)
    write_files([(path, write)])
    return path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then move tmp_path over path in one step (files textleak owns)."""
    write_files([(path, write)])


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
