"""Loading real sentences: the shared dev/train files, local files, or HF `datasets` names.

`load_sentences("cola")` reads `dev_cola.tsv` from the shared data folder when it is there and
otherwise asks `datasets` for GLUE CoLA (which works offline only if the user has it cached).
Paths may be `.tsv` (header `sentence<TAB>label`), `.txt` (one sentence per line), `.jsonl` or
`.csv` (a `sentence` or `text` column, optional `label`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .io import read_text, split_lines

#: short name -> (file stem in the shared folder, HF dataset path, config, text column)
DATASETS = {
    "cola": ("cola", "nyu-mll/glue", "cola", "sentence"),
    "sst2": ("sst2", "nyu-mll/glue", "sst2", "sentence"),
    "rt": ("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes", None, "text"),
    "rotten_tomatoes": ("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes", None, "text"),
}


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None = None


def shared_data_dir() -> Path | None:
    """$TEXTLEAK_DATA, else a `shared/data` folder beside the working directory or the repo."""
    env = os.environ.get("TEXTLEAK_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        candidates += [base / "shared" / "data", base.parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


def shared_file(name: str) -> str:
    """Path of a file (or glob) in the shared data folder; readers report it if it is missing."""
    return str((shared_data_dir() or Path("shared") / "data") / name)


def load_sentences(spec: str, *, split: str = "dev", n: int | None = None) -> list[Example]:
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise InputError(f"data must be a file path or a dataset name, got {spec!r:.60}")
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        examples = _read_file(path)
    elif spec in DATASETS:
        examples = _named(spec, split)
    elif "/" in spec or spec.startswith("hf:"):
        examples = _hf(spec.removeprefix("hf:"), None, "sentence", split)
    else:
        raise InputError(f"no data file {spec!r}; give a path or one of: {', '.join(sorted(DATASETS))}")
    if not examples:
        raise InputError(f"{spec} holds no sentence")
    return examples[:n] if n else examples


def _named(name: str, split: str) -> list[Example]:
    stem, hf_path, config, column = DATASETS[name]
    folder = shared_data_dir()
    if folder is not None and (folder / f"{split}_{stem}.tsv").is_file():
        return _read_file(folder / f"{split}_{stem}.tsv")
    return _hf(hf_path, config, column, "train" if split == "dev" else split)


def _hf(path: str, config: str | None, column: str, split: str) -> list[Example]:
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # offline, unknown name, or missing split: all end the same way
        raise InputError(f"dataset {path} is not available here ({type(exc).__name__}); "
                         f"pass a local file instead") from None
    col = column if column in ds.column_names else next(c for c in ("sentence", "text") if c in ds.column_names)
    labels = ds["label"] if "label" in ds.column_names else [None] * len(ds)
    return [Example(t, y) for t, y in zip(ds[col], labels)]


def _read_file(path: Path) -> list[Example]:
    try:
        return _parse_file(path)
    except csv.Error as exc:  # e.g. a field longer than csv's limit
        raise InputError(f"{path}: not a readable {path.suffix.lstrip('.') or 'CSV'} file ({exc})") from None


def _parse_file(path: Path) -> list[Example]:
    text = read_text(path, "data file")
    lines = split_lines(text)  # at newlines only: \v, \f and the like stay inside a sentence
    if path.suffix == ".txt":
        return [Example(ln.strip()) for ln in lines if ln.strip()]
    if path.suffix == ".jsonl":
        return [_json_row(path, number, ln) for number, ln in enumerate(lines, 1) if ln.strip()]
    delimiter = "\t" if path.suffix == ".tsv" else ","
    # Sentences carry unescaped quotes: no quoting, split on the delimiter only.
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    column = next((c for c in ("sentence", "text") if c in (reader.fieldnames or [])), None)
    if column is None:
        raise InputError(f"{path} needs a 'sentence' or 'text' column")
    examples = []
    for number, r in enumerate(reader, start=2):
        if None in r or any(v is None for v in r.values()):
            raise InputError(f"{path}:{number}: expected {len(reader.fieldnames)} {delimiter!r}-separated fields")
        if not (r[column] and r[column].strip()):
            continue
        label = r.get("label")
        try:
            value = int(label) if label not in (None, "") else None
        except ValueError:
            raise InputError(f"{path}:{number}: label {label!r} is not an integer") from None
        if value is not None and value < 0:
            raise InputError(f"{path}:{number}: label {value} is not a class index")
        examples.append(Example(r[column].strip(), value))
    return examples


def _json_row(path: Path, number: int, line: str) -> Example:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise InputError(f"{path}:{number}: not a JSON object") from None
    text = row.get("sentence", row.get("text")) if isinstance(row, dict) else None
    label = row.get("label") if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{path}:{number}: needs a non-empty 'sentence' or 'text' string")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise InputError(f"{path}:{number}: label {label!r:.40} is not a class index")
    return Example(text.strip(), label)


def read_sentences(path: str | Path) -> list[tuple[str, int | None]]:
    """[(sentence, label or None)] of a data file or dataset name, in order."""
    return [(e.text, e.label) for e in load_sentences(str(path))]
