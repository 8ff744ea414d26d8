"""`textleak` command line: capture, recover, audit, sweep, demo, env. Calls the public API only.

One error boundary: every user error, a bad argument and an interrupt (Ctrl-C or SIGTERM, also
while the libraries load) end in one line `textleak: error: ...` on stderr and a non-zero exit
(2; 130 for Ctrl-C, 143 for SIGTERM); tracebacks are kept for real bugs. Each command checks all
of its inputs and outputs (`textleak.io`'s output rule) before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import InputError, TextleakError
from .interrupts import signal_name, sigterm_as_interrupt
from . import cli_parser
from .cli_parser import PRECISION_NAMES

DEMO_SENTENCE = "We invite submissions for the Thirty-Third Annual Conference on Neural Information Processing Systems."


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _read_texts(args: argparse.Namespace) -> list[str]:
    from .io import read_text, split_lines

    if args.text:
        return list(args.text)
    texts = [ln.strip() for ln in split_lines(read_text(args.file, "text file")) if ln.strip()]
    if not texts:
        raise InputError(f"text file {args.file} holds no sentence")
    return texts


def _batches(texts: list[str], labels: list[int] | None, size: int | None):
    size = size or len(texts)
    for start in range(0, len(texts), size):
        yield texts[start:start + size], (labels[start:start + size] if labels else None)


def _training_step(args: argparse.Namespace):
    """The capture's training protocol from --train-mode, --clip, --clip-per-layer, --precision,
    --pad-to, --pad-side, --pad-multiple, --accumulate."""
    from .capturing import TrainingStep

    return TrainingStep(mode="train" if args.train_mode else "eval", precision=PRECISION_NAMES[args.precision],
                        clip=args.clip, clip_per_layer=getattr(args, "clip_per_layer", None), pad_to=args.pad_to,
                        pad_side=getattr(args, "pad_side", None), pad_multiple=getattr(args, "pad_multiple", None),
                        accumulation=getattr(args, "accumulate", 1))


def cmd_capture(args: argparse.Namespace) -> int:
    from .capture import capture_gradients
    from .cli_files import check_capture_outputs
    from .io import write_files

    if args.image or args.dataset:
        return cmd_capture_image(args)
    device = resolve_device(args.device)  # a GPU asked for and missing fails before any work
    texts = _read_texts(args)
    if args.labels is not None and args.task != "classify":
        raise InputError("--labels is for --task classify; a masked-LM step's labels are its masked tokens")
    if args.labels is not None and len(args.labels) != len(texts):
        raise InputError(f"{len(args.labels)} labels for {len(texts)} texts")
    if args.task == "classify" and args.labels is None:
        raise InputError("--task classify needs --labels, one class per sentence")
    defence = None
    if args.defence:
        from .defences import parse_defence

        defence = parse_defence(args.defence)  # a bad spec fails before the model loads
        args.batch_size = args.batch_size or defence.required_batch_size()
    batches = list(_batches(texts, args.labels, args.batch_size))
    paths = check_capture_outputs(args, len(batches), [(args.file, "--file")] if args.file else [])
    step = _training_step(args)  # a bad --clip or --pad-to fails before the model loads
    short = [len(b) for b, _ in batches if len(b) < step.accumulation]
    if short:
        raise InputError(f"--accumulate {step.accumulation} needs at least {step.accumulation} sentences per batch; "
                         f"a batch has {short[0]}")
    from .text.models import load_text_model

    target = load_text_model(args.model, task=args.task, num_labels=args.num_labels or 2, head_seed=args.head_seed)
    # Capture every batch, then write every file at once: bad input leaves nothing behind.
    captures = [capture_gradients(target, b, labels=y, mask_prob=args.mask_prob, seed=args.seed + i,
                                  declare=args.declare, defence=defence, device=device, step=step)
                for i, (b, y) in enumerate(batches)]
    write_files([f for cap, path in zip(captures, paths) for f in cap.staged(path)])
    for cap, path in zip(captures, paths):
        print(f"wrote {path} ({len(cap.gradients.gradients)} parameters, batch {len(cap.reference.texts)}) "
              f"and ground truth {path.with_name(path.stem + '.reference.json')}")
    return 0


def cmd_capture_image(args: argparse.Namespace) -> int:
    """Images: --image files/folders or --dataset NAME --index ..., on a registered image model."""
    from .cli_files import check_capture_outputs
    from .image.capture import capture_image_gradients, collect_images, image_target
    from .image.data import LabelledImages, load_dataset_images
    from .io import write_files

    device = resolve_device(args.device)
    target = image_target(args.model, num_classes=args.num_labels, channels=args.channels, size=args.image_size,
                          init_seed=args.init_seed)
    if args.dataset:
        found = load_dataset_images(args.dataset, args.index or [0])
    else:
        found = collect_images(list(args.image))
    if args.labels is not None and len(args.labels) != len(found):
        raise InputError(f"{len(args.labels)} labels for {len(found)} images")
    size = args.batch_size or len(found)
    starts = list(range(0, len(found), size))
    paths = check_capture_outputs(args, len(starts), [(p, "--image") for p in args.image or []])
    # Capture every batch, then write every file at once: bad input leaves nothing behind.
    captures = [capture_image_gradients(target, LabelledImages(found.images[a:a + size], found.labels[a:a + size],
                                                               found.names[a:a + size]),
                                        labels=args.labels[a:a + size] if args.labels else None,
                                        declare=args.declare, device=device) for a in starts]
    write_files([f for cap, path in zip(captures, paths) for f in cap.staged(path)])
    for cap, path in zip(captures, paths):
        g, r = path, path.with_name(path.stem + ".reference.json")
        print(f"wrote {g} ({target.spec.name} {'x'.join(map(str, target.input_shape))}, init seed "
              f"{target.spec.init_seed}, batch {len(cap.reference.images)}, labels {cap.reference.labels}) "
              f"and ground truth {r}")
    return 0


def _attack_options(args: argparse.Namespace) -> dict:
    from .attacks.base import parse_options

    keys = ("steps", "restarts", "optimizer", "lr", "distance", "decode", "tv")
    options = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return parse_options(getattr(args, "option", None) or (), options)


def cmd_recover(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from .cli_files import recover_outputs, write_recover_outputs
    from .core.checkpoint import CheckpointLock
    from .recover import recover

    resolve_device(args.device)  # a GPU asked for and missing fails before the files are checked
    checkpoint = recover_outputs(args, _attack_options(args))
    with CheckpointLock(checkpoint) if checkpoint else nullcontext():
        result = recover(gradients=args.grads, model=args.model, attack=args.attack, reference=args.reference,
                         unknown=args.unknown or (), options=_attack_options(args), seed=args.seed,
                         checkpoint=checkpoint, resume=args.resume, progress=not args.quiet, device=args.device,
                         budget=args.budget)
    if (result.assumed or {}).get("training"):
        print(f"textleak: note: {result.assumed['training']}", file=sys.stderr)
    print(result.summary())
    write_recover_outputs(args, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Capture a built-in sentence on the packaged MiniLM, recover it, print both with scores."""
    from .capture import capture_gradients
    from .recover import recover
    from .text.models import load_text_model

    text = args.text or DEMO_SENTENCE
    device = resolve_device(args.device)
    print(f"capturing a masked-LM gradient of: {text}")
    target = load_text_model(args.model, task="mlm")
    cap = capture_gradients(target, [text], seed=args.seed, device=device)
    result = recover(gradients=cap.gradients, model=target, attack=args.attack, reference=cap.reference,
                     seed=args.seed, options=_attack_options(args), progress=not args.quiet, device=device)
    print(f"original : {text}")
    print(result.summary())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run this shard's units of a sweep spec (JSON), or merge all shards' results."""
    from .sweep import SweepSpec, check_folder, merge, run_sweep

    device = resolve_device(args.device)
    check_folder(args.out, "--out", marker="sweep.json")
    if not args.merge:
        spec = SweepSpec.load(args.spec) if args.spec else None
        if spec is None:
            raise InputError("give --spec (a sweep spec JSON), or --merge to merge existing results")
        summary = run_sweep(spec, args.out, backend=args.backend, device=device,
                            progress=None if args.quiet else (lambda m: print(m, flush=True)))
        print(f"shard {summary.rank}/{summary.world_size}: {summary.mine} units, {summary.skipped} already done, "
              f"ran {summary.ran}; results in {summary.results}")
    merged = merge(args.out, say=print)
    print(f"merged {len(merged['units'])} attack units into {Path(args.out) / 'table.json'} and table.csv")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Attack the sentences of --data under each defence, measure accuracy, write the report."""
    from .attacks import ATTACKS
    from .data import read_sentences
    from .defences import parse_defence
    from .report import write_report
    from .pacing import clock
    from .sweep import SweepSpec, check_folder, completed, merge, run_sweep, strongest_attack

    device = resolve_device(args.device)
    out = check_folder(args.out, "--out", marker="results/sweep.json")
    defences = list(dict.fromkeys(["none"] + [parse_defence(d).spec for d in args.defence]))
    for name in args.attack:
        if name != "auto" and name not in ATTACKS:
            ATTACKS.get(name)  # a typo is an error, never a silent fallback
    rows = read_sentences(args.data)
    task = args.task or ("classify" if all(y is not None for _, y in rows) else "mlm")
    say = (lambda m: None) if args.quiet else print
    attacks = list(dict.fromkeys(strongest_attack(a, say=print) for a in args.attack))
    seeds = list(dict.fromkeys(args.seeds))
    if len(seeds) < len(args.seeds):
        print(f"note: --seeds lists a seed more than once; running seeds {' '.join(map(str, seeds))}")
    if args.offset >= len(rows):
        raise InputError(f"{args.data} has {len(rows)} sentences; --offset {args.offset} is past the last")
    n = min(args.n, len(rows) - args.offset)
    if n < args.n:
        print(f"note: {args.data} has {len(rows)} sentences; attacking the {n} from row {args.offset} "
              f"(--n {args.n} asked for more)")
    attacked_end = args.offset + n
    utility = None
    train = args.train or _sibling_train(args.data)
    if args.no_utility or task != "classify":
        print("utility: not measured" + (" (masked-LM sweep)" if task != "classify" else ""))
    elif train is None:
        print("utility: not measured (no --train given and no train_* file beside the data)")
    else:
        left = len(rows) - attacked_end
        held_out = {"test": args.data, "test_skip": attacked_end, "n_test": min(args.utility_test, left)} \
            if left >= 10 else {"test": None, "n_test": args.utility_test}
        utility = {"train": train, "n_train": args.utility_train, "seed": seeds[0], **held_out}
    options = {a: {"steps": args.steps} for a in attacks} if args.steps else {}
    spec = SweepSpec(attacks=attacks, defences=defences, data=args.data, n=n, offset=args.offset,
                     seeds=seeds, model=args.model, task=task, attack_options=options, utility=utility)
    spec.validate()  # unknown names, bad ranges or too few rows fail here, before any file is written
    done = completed(out / "results") if (out / "results").is_dir() else {}
    pending = len([u for u in spec.units() if u["key"] not in done])
    pacer, runner = _audit_pacing(args, pending, say)
    print(f"{len(spec.units())} units: {len(spec.units()) - pending} done, {pending} to run; {pacer.describe()}")
    run_sweep(spec, out / "results", backend=args.backend, progress=pacer.say, runner=runner, device=device)
    print(f"attacks and utility runs took {clock(pacer.elapsed())}")
    merged = merge(out / "results", say=print)
    paths = write_report(merged, out, threshold=args.threshold)
    print(paths["summary"])
    print(f"wrote {paths['html']}, {paths['markdown']} and {len(paths['figures'])} figures in {out / 'figures'}")
    return 0


def _audit_pacing(args: argparse.Namespace, pending: int, say):
    """--budget (whole audit) and --unit-budget (per unit) as a Pacer and the sweep runner."""
    from .pacing import Pacer, fixed_share
    from .sweep import run_unit

    pacer = Pacer(total=args.budget, per_unit=args.unit_budget, units=pending,
                  say=None if args.quiet else say)
    if args.backend == "ray":  # units run in other processes: a fixed share each
        share = pacer.share()
        return pacer, fixed_share(run_unit, share)
    return pacer, pacer.runner(run_unit)


def _sibling_train(data: str) -> str | None:
    p = Path(data)
    if p.name.startswith("dev_"):
        sibling = p.with_name("train_" + p.name[len("dev_"):])
        return str(sibling) if sibling.is_file() else None
    return None


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    from .text.models import DEFAULT_MODEL, resolve_model_path
    from .versions import versions

    info = dict(versions())
    try:
        info["default_model"] = f"{DEFAULT_MODEL} at {resolve_model_path(None)[1]}"
    except TextleakError as exc:
        info["default_model"] = str(exc)
    info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    info["torch_threads"] = str(torch.get_num_threads())
    info["hf_offline"] = os.environ.get("HF_HUB_OFFLINE", "0")
    width = max(map(len, info))
    for k, v in info.items():
        print(f"{k.ljust(width)}  {v}")
    return 0


#: each command's function, by name (the parser lives in `textleak.cli_parser`)
COMMANDS = {"capture": cmd_capture, "recover": cmd_recover, "demo": cmd_demo, "sweep": cmd_sweep,
            "audit": cmd_audit, "env": cmd_env}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(COMMANDS)


def resolve_device(spec: str):
    """`core.device.resolve_device`, imported when a command runs (torch loads after start-up)."""
    from .core.device import resolve_device as resolve

    return resolve(spec)


def _fail(prog: str, exc: BaseException) -> int:
    """The one line every error and interrupt ends in; returns the exit code."""
    if isinstance(exc, TextleakError):
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    name = signal_name(exc)
    print(f"{prog}: error: {'terminated (SIGTERM)' if name == 'SIGTERM' else 'interrupted (Ctrl-C)'}",
          file=sys.stderr)
    return 143 if name == "SIGTERM" else 130


def _run(prog: str, work) -> int:
    """Run `work()` inside the one error boundary (SIGTERM handled as Ctrl-C)."""
    try:
        with sigterm_as_interrupt():
            try:
                return work()
            except (TextleakError, KeyboardInterrupt) as exc:
                return _fail(prog, exc)
    except KeyboardInterrupt as exc:  # a second signal while the first was being reported
        return _fail(prog, exc)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before torch and transformers load
        from .versions import __version__

        print(f"textleak {__version__}")
        return 0

    def work() -> int:
        _quiet_libraries()
        args = build_parser().parse_args(argv)
        with _threads(args.threads):
            return args.func(args)

    try:
        return _run("textleak", work)
    except SystemExit as exc:  # argparse: --help, --version, or a bad argument (one line)
        return exc.code if isinstance(exc.code, int) else 0


@contextlib.contextmanager
def _threads(threads: int | None):
    """Run a command on `threads` torch threads (None: as they are), then put the count back."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_script(entry, prog: str) -> None:
    """Run a recipe's main() with the CLI's handling of user errors (one line, non-zero exit)."""
    def work() -> int:
        _quiet_libraries()
        return entry()

    raise SystemExit(_run(prog, work))


if __name__ == "__main__":
    raise SystemExit(main())
