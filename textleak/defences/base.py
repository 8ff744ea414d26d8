"""What every defence is: a named, parameterised transformation of the gradient a party shares.

Two stages:
- "gradient" defences (noise, pruning, quantisation) transform a finished gradient
  (`apply(gradients, generator)`), so the same object serves a captured gradient file and a
  training step (`apply_to_model_grads` in `textleak.defences.training`).
- "capture" defences change *how* the shared tensor is computed from the batch: DP-SGD needs
  per-example gradients, FedAvg shares a weight update after several local steps, `batch`
  enlarges the batch. They implement `share(compute)` (see `textleak.defences.capture`).

Every defence is registered by name in `DEFENCES` and built from a spec string such as
`noise:1e-3` or `dpsgd:1.0,1.1` by `parse_defence`; a bad spec is a one-line InputError that
lists the valid names or ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..errors import InputError
from ..registry import Registry

DEFENCES: Registry[type] = Registry("defence")


@dataclass(frozen=True)
class Param:
    """One positional argument of a defence spec, with its valid range."""

    name: str
    kind: type  # float or int
    low: float
    high: float
    low_open: bool = False  # True: low itself is not allowed
    default: float | int | None = None  # None: required

    def parse(self, defence: str, text: str) -> float | int:
        try:
            value = self.kind(float(text)) if self.kind is int and float(text).is_integer() else self.kind(text)
        except ValueError:
            raise InputError(f"defence {defence}: {self.name} must be {'an integer' if self.kind is int else 'a number'}"
                             f", got {text!r}; valid: {self.range()}") from None
        if not ((value > self.low if self.low_open else value >= self.low) and value <= self.high):
            raise InputError(f"defence {defence}: {self.name} {value:g} is out of range; valid: {self.range()}")
        return value

    def range(self) -> str:
        return f"{self.name} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


class Defence:
    """Base class; subclasses declare `name`, `stage`, `params` and implement `apply` or `share`."""

    name: ClassVar[str]
    stage: ClassVar[str] = "gradient"  # or "capture"
    params: ClassVar[tuple[Param, ...]] = ()
    #: what the shared tensor is: "gradient", or "update" (a normalised weight difference)
    shares: ClassVar[str] = "gradient"
    #: True when the defence needs per-example gradients (a batch-mean gradient will not do)
    per_example: ClassVar[bool] = False
    #: whether a larger strength defends more (noise variance) or less (a privacy budget epsilon)
    strength_grows: ClassVar[bool] = True
    #: whether the shared tensor carries added noise (what the noisy-gradient attacks are for: a sweep
    #: prepares them only where one of its units' defences adds noise, `attacks.base.prepare`)
    adds_noise: ClassVar[bool] = False

    def __init__(self, *values: float | int):
        self.values = tuple(values)
        for p, v in zip(self.params, values):
            setattr(self, p.name, v)

    # -- spec -----------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{v:g}" for v in self.values)

    @property
    def strength(self) -> float | None:
        """The number a strength axis plots (the first parameter), None for fixed defences."""
        return float(self.values[0]) if self.values else None

    @property
    def strength_label(self) -> str | None:
        return self.params[0].name if self.params else None

    def describe(self) -> dict[str, Any]:
        """What the gradient file records under `capture.defence`."""
        return {"spec": self.spec, "name": self.name, "stage": self.stage, "shares": self.shares,
                "params": {p.name: v for p, v in zip(self.params, self.values)}}

    # -- behaviour ------------------------------------------------------------------------
    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Transform a finished gradient (name -> tensor); never modifies its input."""
        raise InputError(f"defence {self.spec} changes how the gradient is computed from the batch; "
                         "apply it at capture time (capture_gradients(..., defence=...))")

    def share(self, compute: "BatchGradients", generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The tensor this defence shares for one batch; gradient defences transform the batch gradient."""
        return self.apply(compute.batch(), generator)

    def required_batch_size(self) -> int | None:
        return None

    def __repr__(self) -> str:
        return f"<defence {self.spec}>"


class BatchGradients:
    """How a capture-stage defence asks for gradients of the batch being shared.

    batch(): the batch-mean gradient (what training computes).
    example(i): the gradient of example i's own loss (for per-example clipping).
    local_update(steps, lr, minibatch=None, optimizer="sgd", weight_decay=0.0, schedule=None):
        (w0 - wK) / (lr * K) after K local steps (SGD, or AdamW with a fresh state) on the batch, or
        on its mini-batches of `minibatch` examples in turn (K = epochs x mini-batches), or, with
        `schedule`, on schedule[k % len(schedule)] (example indices) at step k; the model's weights
        and .grad restored afterwards.
    """

    def __init__(self, size: int, batch: Callable[[], dict[str, torch.Tensor]],
                 example: Callable[[int], dict[str, torch.Tensor]],
                 local_update: Callable[..., dict[str, torch.Tensor]]):
        self.size = size
        self.batch = batch
        self.example = example
        self.local_update = local_update


def parse_defence(spec: "str | Defence | None") -> Defence:
    """`noise:1e-3`, `prune:0.5`, `fp16`, `dpsgd:1.0,1.1`, `fedavg:4`, `batch:8`, `none` -> Defence."""
    if isinstance(spec, Defence):
        return spec
    if spec is None:
        spec = "none"
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty defence spec; choose one of: {', '.join(DEFENCES.names())}")
    name, _, args = spec.strip().partition(":")
    cls = DEFENCES.get(name.strip().lower())
    texts = [a.strip() for a in args.split(",")] if args.strip() else []
    usage = f"{cls.name}" + (":" + ",".join(p.name for p in cls.params) if cls.params else "")
    ranges = "; ".join(p.range() for p in cls.params) or "no arguments"
    if len(texts) > len(cls.params):
        raise InputError(f"defence {spec!r} has too many arguments; usage: {usage} ({ranges})")
    values = []
    for i, p in enumerate(cls.params):
        if i < len(texts):
            values.append(p.parse(cls.name, texts[i]))
        elif p.default is not None:
            values.append(p.default)
        else:
            raise InputError(f"defence {spec!r} needs {p.name}; usage: {usage} ({ranges})")
    return cls(*values)


def parse_defences(specs: Sequence[str]) -> list[Defence]:
    return [parse_defence(s) for s in specs]


def global_norm(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double().pow(2).sum() for t in tensors.values()), torch.zeros((), dtype=torch.float64)))
