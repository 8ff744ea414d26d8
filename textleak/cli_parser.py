"""The `textleak` argument parser (commands, options, their checks and help); `textleak.cli`
runs what it parses. Values are checked by `textleak.validate` as they are parsed, so a bad one is
one line before any work."""

from __future__ import annotations

import argparse
from typing import Callable, Mapping

from .validate import arg, integer, number, probability


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (usage stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"textleak: error: {message} (see: {self.prog} --help)\n")


#: --precision spellings -> `TrainingStep.precision`
PRECISION_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                   "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


POS_INT = arg(integer, minimum=1)
NAT_INT = arg(integer, minimum=0)
ANY_INT = arg(integer)
POS_FLOAT = arg(number, positive=True)
NAT_FLOAT = arg(number, minimum=0)
PROB = arg(probability)


def _common_attack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=NAT_INT, help="optimisation steps per restart (default: the attack's own)")
    p.add_argument("--restarts", type=POS_INT, help="independent restarts; the closest match wins (default 1)")
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], help="default: the attack's own (DLG: lbfgs)")
    p.add_argument("--lr", type=POS_FLOAT, help="learning rate, a positive finite number "
                                                "(default: 1.0 for lbfgs, 0.1 for adam)")
    p.add_argument("--distance", help="gradient distance: l2, l2-layer, cosine or tag (default: the attack's own)")
    p.add_argument("--decode", choices=["cosine", "l2"], help="nearest-embedding metric for text (default cosine)")


OVERWRITE = "replace existing output files that are not earlier textleak outputs of the same kind"


def build_parser(commands: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The parser; `commands` maps each command name to the function that runs it."""
    from .versions import __version__

    p = OneLineParser(prog="textleak", description="How much private text leaks from shared gradients.")
    p.add_argument("--version", action="version", version=f"textleak {__version__}")
    p.add_argument("--threads", type=int, help="torch threads for this run (default: torch's, one per core; on a "
                   "machine other jobs share, 1 is often faster). Results record it: a rerun repeats a result bit "
                   "for bit only with the same count")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_capture, _recover, _demo, _sweep, _audit, _env):
        add(sub, commands)
    return p


def _capture(sub, commands: Mapping[str, Callable]) -> None:
    from .capture import DECLARABLE, DEFAULT_DECLARED

    c = sub.add_parser("capture", help="compute the gradient a training step would share")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a private sentence (repeat for a batch)")
    src.add_argument("--file", help="a UTF-8 file with one sentence per line")
    src.add_argument("--image", action="append", help="an image file or a folder of them (repeat for a batch)")
    src.add_argument("--dataset", help="images from digits, sample-images, or hf:NAME (e.g. hf:cifar100)")
    c.add_argument("--index", type=NAT_INT, nargs="+", help="which images of --dataset (default: 0)")
    c.add_argument("--model", help="HF model id in the local cache or a folder (default: packaged MiniLM); "
                                   "with images: lenet (default) or resnet-mini")
    c.add_argument("--task", choices=["mlm", "classify"], default="mlm",
                   help="the training step: masked-LM (default) or sequence classification")
    c.add_argument("--labels", "--label", type=NAT_INT, nargs="+",
                   help="class of each sentence (--task classify) or image (default: the dataset's, else 0)")
    c.add_argument("--num-labels", type=arg(integer, minimum=2, maximum=2**20),
                   help="classes, at least 2 (default: 2 for text, 100 for images)")
    c.add_argument("--channels", type=arg(integer, minimum=1, maximum=64), help="image model input channels (default 3)")
    c.add_argument("--image-size", type=arg(integer, minimum=4, maximum=4096),
                   help="image model input side in pixels (default 32)")
    c.add_argument("--init-seed", type=NAT_INT, default=0, help="seed of an image model's weights")
    c.add_argument("--mask-prob", type=PROB, default=0.15, help="masked-LM masking rate in (0, 1] (default 0.15)")
    c.add_argument("--batch-size", type=POS_INT, help="sentences per gradient, at least 1 (default: all in one)")
    c.add_argument("--seed", type=ANY_INT, default=0, help="masking seed")
    c.add_argument("--head-seed", type=NAT_INT, default=0, help="seed for heads missing from the checkpoint")
    c.add_argument("--declare", nargs="*", default=list(DEFAULT_DECLARED), choices=DECLARABLE,
                   help="facts the attacker is assumed to know")
    c.add_argument("--defence", metavar="SPEC", help="defence applied to what is shared, e.g. noise:1e-3, "
                   "laplace:1e-2, prune:0.5, fp16, bf16, int8, dpsgd:1.0,1.1, fedavg:4, batch:8")
    c.add_argument("--train-mode", action="store_true",
                   help="take the step in train mode (the model's dropout active), as a Trainer does")
    c.add_argument("--clip", type=POS_FLOAT, metavar="NORM", help="clip the gradient to this global L2 norm "
                   "(the Trainer's max_grad_norm, default 1.0 there)")
    c.add_argument("--clip-per-layer", type=POS_FLOAT, metavar="NORM",
                   help="clip each parameter's gradient to this L2 norm on its own (per-layer clipping)")
    c.add_argument("--precision", choices=sorted(PRECISION_NAMES), default="float32",
                   help="autocast dtype of the forward pass (bf16/fp16 as TrainingArguments' bf16=/fp16=True)")
    c.add_argument("--pad-to", type=POS_INT, metavar="N", help="pad every sentence to N tokens (default: the longest)")
    c.add_argument("--pad-side", choices=("right", "left"),
                   help="where the pads go (a tokenizer's padding_side; default: the model's tokenizer's, right for BERT)")
    c.add_argument("--pad-multiple", type=POS_INT, metavar="N",
                   help="round the padded length up to a multiple of N (a collator's pad_to_multiple_of)")
    c.add_argument("--accumulate", type=POS_INT, default=1, metavar="K", help="sum the gradient over K micro-batches "
                   "of each batch, each padded on its own (the Trainer's gradient_accumulation_steps; default 1)")
    c.add_argument("--out", required=True, help="gradient file (.pt or .safetensors); the ground truth goes to "
                                                "<stem>.reference.json beside it")
    c.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    _device_argument(c)
    c.set_defaults(func=commands["capture"])


def _recover(sub, commands: Mapping[str, Callable]) -> None:
    from .attacks import ATTACKS
    from .threat import WITHDRAWABLE

    r = sub.add_parser("recover", help="recover the private text behind a gradient file")
    r.add_argument("--grads", required=True, help="the gradient file (.pt or .safetensors) to attack")
    r.add_argument("--model", help="default: the model named in the gradient file")
    r.add_argument("--attack", default="auto", choices=ATTACKS.names(),
                   help="default auto: the strongest method that applies (text: exact where the rank "
                        "condition holds, its variants for updates, noise, dropout and past the rank limit, "
                        "else constrained optimisation; images: iDLG)")
    r.add_argument("--reference", help="ground truth for scoring: reference JSON, one sentence per line, "
                                       "or an image file/folder")
    r.add_argument("--unknown", nargs="*", choices=WITHDRAWABLE, help="declared facts to withhold from the attacker")
    _common_attack_options(r)
    r.add_argument("--tv", type=NAT_FLOAT, help="total-variation prior weight (attack ig)")
    r.add_argument("--seed", type=ANY_INT, default=0, help="seed of the attack's random starts (default 0)")
    r.add_argument("--checkpoint", help="checkpoint file (default: <grads>.<hash of the settings>.ckpt beside the "
                                        "gradient file, or in the user cache when that folder is read-only)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    r.add_argument("--budget", type=float, metavar="SECONDS",
                   help="wall-time limit of the attack: past it the best guess so far is returned, marked as such")
    r.add_argument("--out", help="write the result as JSON, or the recovered image(s) for .png/.jpg")
    r.add_argument("--figure", help="images: write a PNG grid of ground truth and reconstruction over iterations")
    r.add_argument("--report", help="write a report (.md or .html)")
    r.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any setting of the attack (value as JSON, else text), e.g. prior=none; for auto, "
                        "a stage's setting: exact.widen=2, lamp.prior=none (repeat for more)")
    r.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_argument(r)
    r.set_defaults(func=commands["recover"])


def _demo(sub, commands: Mapping[str, Callable]) -> None:
    from .attacks import ATTACKS

    d = sub.add_parser("demo", help="capture and recover a built-in sentence on the packaged MiniLM")
    d.add_argument("--text", help="the sentence to capture and recover (default: a NeurIPS call sentence)")
    d.add_argument("--model", help="default: the packaged MiniLM")
    d.add_argument("--attack", default="auto", choices=ATTACKS.names(), help="default auto")
    _common_attack_options(d)
    d.add_argument("--seed", type=ANY_INT, default=0, help="masking and attack seed")
    d.add_argument("--option", action="append", metavar="KEY=VALUE", help="as for recover")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_argument(d)
    d.set_defaults(func=commands["demo"])


def _sweep(sub, commands: Mapping[str, Callable]) -> None:
    s = sub.add_parser("sweep", help="run (this shard of) a sweep spec, resumably; or merge its results")
    s.add_argument("--spec", help="sweep spec JSON (textleak.sweep.SweepSpec fields)")
    s.add_argument("--out", required=True, help="results folder (resumes what it holds)")
    s.add_argument("--backend", choices=["local", "ray"], default="local")
    s.add_argument("--merge", action="store_true", help="only merge all shards' results into table.json/.csv")
    s.add_argument("--quiet", action="store_true")
    _device_argument(s)
    s.set_defaults(func=commands["sweep"])


def _audit(sub, commands: Mapping[str, Callable]) -> None:
    a = sub.add_parser("audit", help="attack under each defence, measure accuracy, write an HTML/Markdown report")
    a.add_argument("--model", help="default: the packaged MiniLM")
    a.add_argument("--data", required=True, help="sentences to attack: TSV sentence<TAB>label, or one per line")
    a.add_argument("--defence", nargs="+", required=True, metavar="SPEC", help="e.g. noise:1e-3 prune:0.5 fp16")
    a.add_argument("--attack", nargs="+", default=["auto"], help="registered attack names (default auto)")
    a.add_argument("--n", type=POS_INT, default=20, help="sentences attacked (at most the file's rows)")
    a.add_argument("--offset", type=NAT_INT, default=0, help="first row attacked")
    a.add_argument("--seeds", type=ANY_INT, nargs="+", default=[0], help="attack seeds (repeats are dropped)")
    a.add_argument("--task", choices=["classify", "mlm"], help="default: classify when the data has labels")
    a.add_argument("--steps", type=NAT_INT, help="optimisation steps of every attack")
    a.add_argument("--train", help="training split for the accuracy runs (default: train_* beside a dev_* file)")
    a.add_argument("--utility-train", type=POS_INT, default=512, help="training sentences per accuracy run")
    a.add_argument("--utility-test", type=POS_INT, default=200, help="held-out sentences (data rows not attacked)")
    a.add_argument("--no-utility", action="store_true", help="skip the accuracy runs")
    a.add_argument("--threshold", type=arg(number, minimum=0, maximum=1), default=0.5,
                   help="ROUGE-1 below which a setting defends")
    a.add_argument("--backend", choices=["local", "ray"], default="local")
    a.add_argument("--budget", type=POS_FLOAT, metavar="SECONDS",
                   help="wall time for all attacks and accuracy runs together: each unit gets the time left "
                        "divided by the units left, so quick units leave time to slow ones")
    a.add_argument("--unit-budget", type=POS_FLOAT, metavar="SECONDS", help="wall-time cap of each unit")
    a.add_argument("--out", required=True, help="report folder (results/ inside it resume)")
    a.add_argument("--quiet", action="store_true", help="no per-unit progress lines")
    _device_argument(a)
    a.set_defaults(func=commands["audit"])


def _env(sub, commands: Mapping[str, Callable]) -> None:
    e = sub.add_parser("env", help="versions, default model and device (for bug reports)")
    e.set_defaults(func=commands["env"])


def _device_argument(parser: argparse.ArgumentParser) -> None:
    from .core.device import CHOICES as DEVICES

    parser.add_argument("--device", default="auto", metavar="{" + ",".join(DEVICES) + ",cuda:N}",
                        help="where the work runs (default auto: CUDA when present, else the CPU)")
