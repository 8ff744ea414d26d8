"""Writing a report folder: report.html (self-contained), summary.md, figures/*.png."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..io import atomic_write, atomic_write_text
from .html import render_html
from .markdown import render_markdown
from .plots import FIGURES


def write_report(merged: Mapping[str, Any], out_dir: str | Path, *, title: str = "textleak privacy audit",
                 threshold: float = 0.5) -> dict[str, Any]:
    out = Path(out_dir)
    figures: dict[str, tuple[bytes, str]] = {}
    paths = []
    for name, (make, caption) in FIGURES.items():
        png = make(merged["table"])
        if png is None:  # e.g. no accuracy measured: no accuracy figure
            continue
        figures[name] = (png, caption)
        path = out / "figures" / f"{name}.png"
        atomic_write(path, lambda tmp, png=png: Path(tmp).write_bytes(png))
        paths.append(path)
    markdown = render_markdown(merged, title=title, threshold=threshold)
    atomic_write_text(out / "summary.md", markdown)
    atomic_write_text(out / "report.html", render_html(merged, figures, title=title, threshold=threshold))
    _readable(out / "report.html", out / "summary.md", *paths)
    return {"html": out / "report.html", "markdown": out / "summary.md", "figures": paths, "summary": markdown}


def _readable(*paths: Path) -> None:
    """Reports are for sharing: the usual file mode, not the private one of a temporary file."""
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        p.chmod(0o666 & ~umask)
