"""What each CLI command reads and writes, checked together before any work, then written at once.

The output rule itself is `textleak.io`'s; this module lists each command's inputs and outputs
(capture: a gradient and a reference file per batch; recover: --out, --report, --figure and the
checkpoint) and writes recover's files all or none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError


def _batch_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(n)]


def check_capture_outputs(args: argparse.Namespace, n_batches: int, inputs: list) -> list[Path]:
    """Every gradient and reference file this capture writes, checked before any work."""
    from .capture import reference_path
    from .io import as_path, check_outputs

    paths = _batch_paths(as_path(args.out, "--out"), n_batches)
    outputs = [o for p in paths for o in ((p, "gradients", "--out"), (reference_path(p), "reference",
                                                                       f"reference file {reference_path(p).name}"))]
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    return paths


def recover_outputs(args: argparse.Namespace, options: dict) -> Path | None:
    """Check --out, --report, --figure and the checkpoint against the inputs and each other, before any
    work; returns the checkpoint path (None: no folder to keep one in, which is said)."""
    from .core.checkpoint import default_checkpoint
    from .io import as_path, check_outputs
    from .report.images import IMAGE_OUTPUTS

    if args.figure and not args.figure.lower().endswith(".png"):
        raise InputError("--figure must name a .png file")
    if args.report and Path(args.report).suffix.lower() not in (".md", ".html", ".htm"):
        raise InputError("--report must name a .md or .html file")
    grads = as_path(args.grads, "--grads")
    if not grads.is_file():
        raise InputError(f"gradient file {grads} {'is not a file' if grads.exists() else 'does not exist'}")
    inputs = [(grads, "gradient file (--grads)")]
    if args.reference:
        inputs.append((as_path(args.reference, "--reference"), "reference (--reference)"))
    if args.model and Path(args.model).exists():
        inputs.append((Path(args.model), "model (--model)"))
    checkpoint, note = (as_path(args.checkpoint, "--checkpoint"), None) if args.checkpoint else \
        default_checkpoint(grads, {"attack": args.attack, "model": args.model, "seed": args.seed,
                                   "unknown": sorted(args.unknown or ()), "options": options})
    if note:
        print(f"textleak: note: {note}", file=sys.stderr)
    outputs = [(p, kind, what) for p, kind, what in (
        (args.out, "image" if args.out and Path(args.out).suffix.lower() in IMAGE_OUTPUTS else "result", "--out"),
        (args.report, "report", "--report"), (args.figure, "image", "--figure"),
        (checkpoint, "checkpoint", "--checkpoint" if args.checkpoint else "the checkpoint")) if p]
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    if args.resume and (checkpoint is None or not checkpoint.is_file()):
        raise InputError(f"nothing to resume: no checkpoint {'at ' + str(checkpoint) if checkpoint else 'kept'} "
                         "for these settings (the run finished, or was never interrupted with them); "
                         "run without --resume to start over")
    return checkpoint


def write_recover_outputs(args: argparse.Namespace, result) -> None:
    """Every requested file, staged and then renamed together (all or none)."""
    from .io import write_files
    from .report.images import IMAGE_OUTPUTS

    files: list = []
    if args.out and Path(args.out).suffix.lower() in IMAGE_OUTPUTS:
        from .report.images import image_files

        from .io import check_outputs

        images = image_files(result, args.out)
        check_outputs([(p, "image", "--out") for p, _ in images], [(args.grads, "gradient file")],
                      overwrite=args.overwrite)
        files += images
    elif args.out:
        text = result.to_json()
        files.append((Path(args.out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    if args.figure:
        from .io import PNG_MARK
        from .report.images import image_grid

        fig = image_grid(result, args.reference)
        files.append((Path(args.figure), lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=PNG_MARK)))
    if args.report:
        page = result.report("html" if Path(args.report).suffix.lower() in (".html", ".htm") else "markdown")
        files.append((Path(args.report), lambda tmp: Path(tmp).write_text(page, encoding="utf-8")))
    write_files(files, make_folders=False)
    for path, _ in files:
        print(f"wrote {path}")


