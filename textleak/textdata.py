"""Reading labelled sentences: the project's TSV files (`sentence<TAB>label` with a header) or
plain text with one sentence per line (no labels)."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def read_sentences(path: str | Path) -> list[tuple[str, int | None]]:
    """[(sentence, label or None)] in file order; empty lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"data file {path} holds no sentence")
    header = lines[0].split("\t")
    if "\t" not in lines[0] or "sentence" not in header:
        return [(ln.strip(), None) for ln in lines]
    text_col = header.index("sentence")
    label_col = header.index("label") if "label" in header else None
    rows: list[tuple[str, int | None]] = []
    for number, ln in enumerate(lines[1:], start=2):
        cells = ln.split("\t")
        if len(cells) != len(header):
            raise InputError(f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(cells)}")
        label = None
        if label_col is not None:
            try:
                label = int(cells[label_col])
            except ValueError:
                raise InputError(f"{path}:{number}: label {cells[label_col]!r} is not an integer") from None
        rows.append((cells[text_col].strip(), label))
    if not rows:
        raise InputError(f"data file {path} holds no sentence")
    return rows
