"""A sweep's folder on disk: its spec record, its per-shard locks and its results files.

- `check_folder`: an output folder is new, empty, or one textleak made; never a file.
- `shard_lock`: an OS file lock per shard (released if the process dies), so two runs of the
  same shard in one folder cannot run a unit twice; the second is refused at once.
- `read_spec_file`: the folder's sweep.json, or a one-line error if it is corrupt; `claim_folder`
  writes it, or refuses a folder whose results were made under other settings.
- results: one JSONL file per shard; each line one finished unit, durable before the next starts
  (`JsonlAppender`); `completed` reads every shard's valid records (a torn or invalid line is
  left out, so its unit runs again), written as strict JSON (no NaN).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InputError
from .io import atomic_write_text, dumps


def check_folder(folder: str | Path, what: str, *, marker: str) -> Path:
    """An output folder: new, empty, or one textleak made (it holds `marker`); never a file."""
    from .io import as_path

    folder = as_path(folder, what)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file; give a folder")
    holds_files = folder.is_dir() and any(not f.startswith(".lock-") for _, _, files in os.walk(folder) for f in files)
    if holds_files and not (folder / marker).is_file():
        raise InputError(f"{what} {folder} holds other files and no {marker}; textleak writes into a new, empty "
                         "or earlier textleak folder")
    return folder


def read_jsonl(path: Path, *, skipped: list[str] | None = None, schema: dict | None = None) -> list[dict[str, Any]]:
    """Complete, valid records only: a line cut short by a kill, or one that is not a record of
    `schema` (default: a sweep's result record; e.g. `{}`), is left out (a sweep's unit then runs
    again) and noted in `skipped`."""
    from .schema import SWEEP_KEY, first_error

    schema = SWEEP_KEY if schema is None else schema

    out = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                rec, problem = None, "not JSON"
            else:
                problem = first_error(rec, schema, "record")
            if problem is None:
                out.append(rec)
            elif skipped is not None and raw.strip():
                skipped.append(f"{path.name}:{number}: {problem}")
    return out


def keyed_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """key -> record of a recipe's resumable JSONL (none when the file does not exist yet); a line
    cut short by a kill, or one without a key, is left out, so its unit runs again."""
    from .schema import KEYED_RECORD

    path = Path(path)
    return {rec["key"]: rec for rec in read_jsonl(path, schema=KEYED_RECORD)} if path.is_file() else {}


def result_files(out_dir: str | Path) -> list[Path]:
    return sorted(Path(out_dir).glob("results-*.jsonl"))


def completed(out_dir: str | Path, *, say: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """key -> record, over every shard's file (the first record of a key wins). Lines that are not
    valid records are left out; `say` hears how many."""
    done: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for path in result_files(out_dir):
        for rec in read_jsonl(path, skipped=skipped):
            done.setdefault(rec["key"], rec)
    if skipped and say is not None:
        say(f"note: left out {len(skipped)} result line(s) that are not valid records, e.g. {skipped[0]}")
    return done


class JsonlAppender:
    """Appends one JSON record per line and makes it durable before returning."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:  # a kill cut the last line short: end it so the next record stands alone
                with path.open("ab") as fh:
                    fh.write(b"\n")

    def append(self, record: dict[str, Any]) -> None:
        line = dumps(record) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def shard_lock(out: Path, rank: int, world_size: int) -> Iterator[None]:
    """An OS file lock per shard (released if the process dies): a second run of the same shard in
    the same folder is refused at once."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / f".lock-{rank:03d}-of-{world_size:03d}"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"another sweep is running shard {rank}/{world_size} in {out}; wait for it to finish, "
                         "or give this one another folder or shard") from None
    try:
        yield
    finally:
        lock.release()


def read_spec_file(path: Path) -> dict[str, Any]:
    """A folder's sweep.json, or a one-line error naming it."""
    from .io import read_text
    from .schema import parse_json

    data = parse_json(read_text(path, "sweep record"), f"{path} (the folder's sweep record)")
    if not isinstance(data, dict):
        raise InputError(f"{path} is corrupt (not a JSON object); move it away to start a new sweep in its folder")
    return data


#: fields a resumed sweep may change: each unit's key names them, so old results stay valid
EXTENDABLE = ("attacks", "defences", "n", "seeds")


def claim_folder(path: Path, mine: dict[str, Any]) -> None:
    """Record the sweep's spec `mine` at `path` (the folder's sweep.json); refuse to mix results made
    under other settings into the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        theirs = read_spec_file(path)
        changed = sorted(k for k in set(mine) | set(theirs) if k not in EXTENDABLE and mine.get(k) != theirs.get(k))
        if changed:
            raise InputError(f"{path.parent} holds results made with other {', '.join(changed)} ({path}); "
                             "use another output folder")
        if theirs == mine:
            return
    atomic_write_text(path, json.dumps(mine, indent=1))
