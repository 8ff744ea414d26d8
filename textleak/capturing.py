"""One capture builder for every victim: `capture_gradients` (text), `capture_image_gradients`
and the transformers `GradientCaptureCallback` all assemble a capture here, in one way:

    the batch's facts -> the attacker's declared share of them (`Knowledge`)
                      -> the metadata of what was shared -> `Capture(GradientFile, Reference)`

`TrainingStep` is the protocol of the step (train/eval, precision, clipping, padding,
micro-batches, loss reduction); `step_gradients` computes what a captured step shares under it
and a defence. `CaptureBuilder` writes the metadata's `capture` section:

    source        who captured: "capture_gradients", "capture_image_gradients", "transformers.Trainer"
    mode          "eval" | "train" (dropout active)
    dropout       {setting: rate}: the model config's dropout rates (HF), else each nn.Dropout's p
    clipping      {"max_norm": float | None, "clipped": bool | None}: the bound, and whether this step hit
                  it; "per_layer": float, each parameter's own bound, where the step clips per layer
    precision     "float32" | "bfloat16" | "float16": the autocast dtype of the forward pass
    padding       {"side": "right" | "left", "length": int | None (the padded length; the longest
                  micro-batch's), "lengths": [int] (each micro-batch's padded length), "to": int | None
                  (fixed-length padding), "multiple": int | None (pad_to_multiple_of)}; None for images
    accumulation  {"steps": int, "sizes": [int]}: micro-batches summed into the shared gradient, and
                  how many sentences each held (in batch order)
    loss          {"function": "cross-entropy", "reduction": "mean" | ...}
    defence       `Defence.describe()`, or None for the plain gradient
    victim        the victim's own settings and by-products (seed, mask_prob, loss_value, ...)
    determinism   `core.seeding.determinism_settings()` of the capturing process (threads, kernels)

`threat.PUBLIC_METADATA` says which of these an attacker sees (`victim`, `determinism` and
`clipped` never).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .core.seeding import determinism_settings, model_mode
from .errors import InputError
from .gradients import GradientFile, check_finite
from .threat import Knowledge, Reference
from .versions import versions

#: facts about a batch an attacker may be declared to know
DECLARABLE = ("batch_size", "seq_lengths", "labels", "mask_positions")
DEFAULT_DECLARED = ("batch_size", "seq_lengths", "mask_positions")
MODES = ("eval", "train")
PAD_SIDES = ("right", "left")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: loss_of(rows) -> the training loss of those examples of the batch (a scalar with a graph)
LossOf = Callable[[Sequence[int]], torch.Tensor]


@dataclass(frozen=True)
class TrainingStep:
    """How the captured step trains: the settings a training protocol fixes for every party.

    mode: "eval" (dropout off) or "train" (dropout on). precision: autocast dtype of the forward
    pass ("float32": none). clip: max global L2 norm of the shared gradient (None: no clipping).
    clip_per_layer: max L2 norm of each parameter's gradient, each clipped on its own (Opacus'
    per-layer style, one bound for every tensor; applied after `clip`; None: none).
    pad_to: pad every sequence to this many tokens (None: to the batch's longest). pad_side:
    where the pads go ("right", or "left" as a tokenizer with padding_side="left" puts them: the
    real tokens then stand at positions L - n .. L - 1, BERT's position ids counting over the pads;
    None: the tokenizer's own padding_side).
    pad_multiple: round the padded length up to a multiple of this (`pad_to_multiple_of`).
    accumulation: micro-batches summed into one step, as the Trainer's `gradient_accumulation_steps`
    (consecutive micro-batches of ceil(B / accumulation) sentences, each padded on its own, each
    micro-batch's mean loss divided by the number of micro-batches). reduction: how the loss
    reduces over examples.
    """

    mode: str = "eval"
    precision: str = "float32"
    clip: float | None = None
    clip_per_layer: float | None = None
    pad_to: int | None = None
    pad_side: str | None = None
    pad_multiple: int | None = None
    accumulation: int = 1
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.clip is not None and not self.clip > 0:
            raise InputError(f"the clipping norm must be positive, got {self.clip}")
        if self.clip_per_layer is not None and not self.clip_per_layer > 0:
            raise InputError(f"the per-layer clipping norm must be positive, got {self.clip_per_layer}")
        if self.pad_to is not None and self.pad_to < 1:
            raise InputError(f"the padding length must be at least 1, got {self.pad_to}")
        if self.pad_side is not None and self.pad_side not in PAD_SIDES:
            raise InputError(f"unknown padding side {self.pad_side!r}; choose one of: {', '.join(PAD_SIDES)}")
        if self.pad_multiple is not None and self.pad_multiple < 1:
            raise InputError(f"the padding multiple must be at least 1, got {self.pad_multiple}")
        if self.accumulation < 1:
            raise InputError(f"gradient accumulation needs at least 1 micro-batch, got {self.accumulation}")


def parameter_gradients(loss: torch.Tensor, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """d loss / d parameter for every trainable parameter, leaving the model's .grad untouched."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g.detach().clone() for (n, _), g in zip(named, grads) if g is not None}


def clip_gradients(grads: dict[str, torch.Tensor], max_norm: float | None) -> tuple[dict[str, torch.Tensor], bool | None]:
    """Scale to global L2 norm `max_norm` when above it (torch.nn.utils.clip_grad_norm_'s rule)."""
    if max_norm is None:
        return grads, None
    norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())))
    if norm <= max_norm:
        return grads, False
    factor = max_norm / (norm + 1e-6)
    return {n: g * factor for n, g in grads.items()}, True


def clip_per_layer(grads: dict[str, torch.Tensor], max_norm: float | None) -> tuple[dict[str, torch.Tensor], bool | None]:
    """Scale each parameter's gradient to L2 norm `max_norm` when above it, each by its own factor
    (per-layer clipping); whether any was scaled."""
    if max_norm is None:
        return grads, None
    out, clipped = {}, False
    for n, g in grads.items():
        norm = float(g.double().norm())
        if norm > max_norm:
            g, clipped = g * (max_norm / (norm + 1e-6)), True
        out[n] = g
    return out, clipped


#: float16 autocast's initial loss scale (torch.amp.GradScaler's, as the Trainer's fp16=True uses)
FP16_LOSS_SCALE = 2.0 ** 16


def _scaled_gradients(loss: torch.Tensor, model: torch.nn.Module, precision: str) -> dict[str, torch.Tensor]:
    """The parameter gradients as mixed-precision training computes them: in float16 the loss is
    scaled up before the backward pass (else small gradients underflow) and the gradients are
    unscaled after, halving the scale while any overflows (GradScaler's rule)."""
    if precision != "float16":
        return parameter_gradients(loss, model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scale = FP16_LOSS_SCALE
    while True:
        grads = torch.autograd.grad(loss * scale, [p for _, p in named], allow_unused=True, retain_graph=scale > 1)
        if scale <= 1 or all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
            return {n: g.detach() / scale for (n, _), g in zip(named, grads) if g is not None}
        scale /= 2


@contextlib.contextmanager
def _dropout_seed(seed: int, device: torch.device):
    """Seed torch's global RNG (which dropout draws from) for a block, then restore the caller's."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _autocast(precision: str, device: torch.device):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def step_gradients(model: torch.nn.Module, loss_of: LossOf, size: int, *, step: TrainingStep,
                   defence: Any = None, seed: int = 0) -> tuple[dict[str, torch.Tensor], float, bool | None]:
    """(shared gradients on the CPU, loss value, clipped) of one step on a batch of `size`.

    The gradient is computed in `step.mode` and `step.precision` on the model's device, clipped to
    `step.clip`, then shared under `defence` (a gradient-stage defence transforms the clipped
    gradient, as in a training loop; a capture-stage one computes what it shares itself). `seed`
    draws the defence's randomness and, in train mode, the dropout masks (the caller's RNG
    streams are left as they were).
    """
    generator = torch.Generator().manual_seed(seed)
    from .defences import parse_defence, shared_gradients

    defence = parse_defence(defence) if defence is not None else None
    clipping = step.clip is not None or step.clip_per_layer is not None
    if defence is not None and clipping and defence.stage != "gradient":
        raise InputError(f"defence {defence.spec} computes what it shares from the batch itself; "
                         "it cannot be combined with clipping the batch gradient")
    device = next(model.parameters()).device
    everyone = list(range(size))
    with model_mode(model, train=step.mode == "train"), torch.enable_grad(), _autocast(step.precision, device), \
            _dropout_seed(seed, device):
        loss = loss_of(everyone)
        if defence is not None and not clipping:
            grads, clipped = shared_gradients(defence, model, loss_of, size, generator), None
        else:
            grads, clipped = clip_gradients(_scaled_gradients(loss, model, step.precision), step.clip)
            grads, by_layer = clip_per_layer(grads, step.clip_per_layer)
            clipped = clipped if by_layer is None else bool(clipped) or by_layer
            if defence is not None:
                need = defence.required_batch_size()
                if need is not None and need != size:
                    raise InputError(f"defence {defence.spec} shares batches of {need} examples; this batch has {size}")
                grads = defence.apply(grads, generator)
    grads = {n: g.detach().cpu() for n, g in grads.items()}
    check_finite(grads, source="the captured gradient")
    return grads, float(loss.detach()), clipped


def dropout_rates(model: torch.nn.Module) -> dict[str, float]:
    """The model's dropout settings: an HF config's `*dropout*` rates, else each nn.Dropout's p."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return {k: float(v) for k, v in sorted(config.to_dict().items())
                if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {name: float(m.p) for name, m in model.named_modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)}


def declared_knowledge(facts: Mapping[str, Any], declare: Iterable[str], *, special_tokens: bool = True) -> Knowledge:
    """The facts named in `declare` (each must be in DECLARABLE; facts the batch lacks are skipped)."""
    declare = check_declared(declare)
    return Knowledge.from_dict({**{k: v for k, v in facts.items() if k in declare and v is not None},
                                "special_tokens": special_tokens})


def check_declared(declare: Iterable[str]) -> tuple[str, ...]:
    from .validate import sequence

    declare = (declare,) if isinstance(declare, str) else tuple(sequence(declare, "declare"))
    bad = [d for d in declare if not isinstance(d, str) or d not in DECLARABLE]
    if bad:
        raise InputError(f"cannot declare {bad[0]!r}; declarable: {', '.join(DECLARABLE)}")
    return declare


@dataclass
class CaptureBuilder:
    """Facts -> knowledge -> metadata -> `Capture`, the same for every victim (see the module doc).

    facts: batch_size, seq_lengths, labels, mask_positions (those the batch has). declare: which
    the attacker is assumed to know. victim: private settings and by-products. extra: modality
    facts (public where `threat.PUBLIC_METADATA` names them).
    """

    modality: str
    source: str
    spec: Mapping[str, Any]
    facts: Mapping[str, Any]
    declare: Iterable[str] = DEFAULT_DECLARED
    step: TrainingStep = field(default_factory=TrainingStep)
    dropout: Mapping[str, float] = field(default_factory=dict)
    padding: Mapping[str, Any] | None = None
    micro_batches: Sequence[int] | None = None
    clipped: bool | None = None
    defence: Any = None
    victim: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def knowledge(self) -> Knowledge:
        return declared_knowledge(self.facts, self.declare, special_tokens=self.modality == "text")

    def capture_section(self) -> dict[str, Any]:
        step = self.step
        return {"source": self.source, "mode": step.mode, "dropout": dict(self.dropout),
                "clipping": {"max_norm": step.clip, "clipped": self.clipped,
                             **({"per_layer": step.clip_per_layer} if step.clip_per_layer is not None else {})},
                "precision": step.precision,
                "padding": None if self.padding is None else dict(self.padding),
                "accumulation": {"steps": step.accumulation,
                                 **({"sizes": list(self.micro_batches)} if self.micro_batches else {})},
                "loss": {"function": "cross-entropy", "reduction": step.reduction},
                "defence": self.defence.describe() if self.defence is not None else None,
                "victim": dict(self.victim),
                # the victim's thread count and kernels decide the gradient's last bits, as they do a result's
                "determinism": determinism_settings(self.victim.get("seed"))}

    def metadata(self) -> dict[str, Any]:
        meta = {"modality": self.modality, "model": dict(self.spec), "knowledge": self.knowledge().to_dict(),
                "capture": self.capture_section(), "extra": dict(self.extra), "versions": versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        # The same plain-JSON values in memory as after a save/load round trip.
        return json.loads(json.dumps(meta))

    def build(self, gradients: Mapping[str, torch.Tensor], reference: Reference):
        from .capture import Capture

        return Capture(GradientFile(dict(gradients), self.metadata()), reference)


def micro_batches(size: int, steps: int) -> list[tuple[int, int]]:
    """(start, end) of each micro-batch when a batch of `size` is accumulated over `steps`: consecutive
    micro-batches of ceil(size / steps) sentences (a data loader's), the last one possibly smaller."""
    if steps > size:
        raise InputError(f"gradient accumulation over {steps} micro-batches needs at least {steps} sentences, got {size}")
    each = -(-size // steps)
    return [(a, min(a + each, size)) for a in range(0, size, each)]


def concat_rows(parts: Sequence[torch.Tensor], side: str, value: int) -> torch.Tensor:
    """Micro-batches' tensors as one batch: 2-d ones padded with `value` to the widest on `side`."""
    if parts[0].dim() < 2:
        return torch.cat(list(parts))
    width = max(t.shape[1] for t in parts)
    pad = lambda t: (width - t.shape[1], 0) if side == "left" else (0, width - t.shape[1])  # noqa: E731
    return torch.cat([torch.nn.functional.pad(t, pad(t), value=value) for t in parts])


def text_facts(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
               task: str) -> tuple[dict[str, Any], torch.Tensor]:
    """(facts, original ids) of a text batch as the model saw it: `input_ids` [B, L] (masked for
    masked-LM), `labels` as HF takes them ([B] classes, or [B, L] token ids with -100 where
    unlabelled). Lengths count the attended tokens; masked positions count from each row's first
    attended token (its [CLS], wherever padding put it)."""
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    facts: dict[str, Any] = {"batch_size": int(input_ids.shape[0]), "seq_lengths": attention_mask.sum(1).tolist()}
    original = input_ids.clone()
    if labels is None:
        return facts, original
    labels = labels.cpu()
    if task == "mlm":
        labelled = labels != -100
        original = torch.where(labelled, labels, input_ids)
        start = [int(row.nonzero()[0]) if bool(row.any()) else 0 for row in attention_mask]
        at = [row.nonzero().flatten().tolist() for row in labelled]
        facts["mask_positions"] = [[p - s for p in pos] for pos, s in zip(at, start)]
        facts["labels"] = [[int(labels[b, p]) for p in pos] for b, pos in enumerate(at)]
    else:
        facts["labels"] = labels.tolist()
    return facts, original


def text_reference(original: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: Sequence[Any], texts: Sequence[str] | None, tokenizer: Any = None) -> Reference:
    """The private batch: each row's attended tokens before and after masking, and its text
    (`texts`, else decoded with `tokenizer`)."""
    keep = attention_mask.cpu().bool()
    token_ids = [row[k].tolist() for row, k in zip(original.cpu(), keep)]
    if texts is None and tokenizer is not None:
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
    return Reference(modality="text", texts=None if texts is None else list(texts), labels=list(labels),
                     token_ids=token_ids, masked_input_ids=[row[k].tolist() for row, k in zip(input_ids.cpu(), keep)])
