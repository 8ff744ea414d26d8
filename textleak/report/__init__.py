"""Reports that read results, never models: audit pages from sweeps (figures, HTML, Markdown),
and pictures of single results (`images.image_grid`).

    write_report(merged, out_dir)  -> {"html": path, "markdown": path, "figures": [paths]}
where `merged` is `textleak.sweep.merge(results_dir)`.
"""

from .analysis import strongest, weakest_defending
from .html import render_html
from .markdown import render_markdown
from .plots import FIGURES
from .write import write_report

__all__ = ["FIGURES", "render_html", "render_markdown", "strongest", "weakest_defending", "write_report"]
