"""Image classifiers the attacker can rebuild exactly: registered by name, weights from a seed.

`lenet` is the LeNet of the DLG paper's code (Zhu et al. 2019): three 5x5 convolutions with
'same' padding and strides 2, 2, 1, 12 channels each, sigmoid after every convolution, one linear
layer; every weight and bias drawn uniformly from [-0.5, 0.5]. `resnet-mini` is a small
residual network with softplus activations and average pooling only (no ReLU or max-pool, whose
second derivative is zero almost everywhere, which starves gradient matching).

Both victim and attacker build a model with `load_image_model(name, init_seed=..)`, and the
gradient file records the name, shape, classes, normalisation and seed (`ImageModelSpec`), so
`recover` rebuilds the same weights. Any other `torch.nn.Module` classifier is wrapped with
`target_from_module` (the attacker must then pass the same module).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.device import module_device
from ..core.seeding import model_mode, seeded
from ..errors import InputError
from ..registry import Registry
from ..text.models import weights_hash

#: builder(channels, size, num_classes) -> module; weights are drawn under the caller's seed
IMAGE_MODELS: Registry[Callable[[int, int, int], nn.Module]] = Registry("image model")
DEFAULT_IMAGE_MODEL = "lenet"


class LeNet(nn.Module):
    """DLG's LeNet. Input [B, C, S, S] -> logits [B, num_classes]; features 12 x ceil(S/4)^2."""

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 100):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1), nn.Sigmoid(),
        )
        side = math.ceil(math.ceil(size / 2) / 2)
        self.classifier = nn.Linear(12 * side * side, num_classes)
        # DLG draws every parameter from U[-0.5, 0.5]: large weights keep the sigmoids out of
        # their flat regions, so the gradient carries more of the input.
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SmoothBlock(nn.Module):
    """Residual block: conv3x3 - softplus - conv3x3, plus a (1x1 strided) shortcut, then softplus."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride)
        self.act = nn.Softplus()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class ResNetMini(nn.Module):
    """Stem conv (16) and three residual stages (16, 32/2, 64/2), global average pool, linear."""

    def __init__(self, channels: int = 3, size: int = 32, num_classes: int = 100, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.Softplus())
        self.stages = nn.Sequential(SmoothBlock(width, width, 1), SmoothBlock(width, 2 * width, 2),
                                    SmoothBlock(2 * width, 4 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))


IMAGE_MODELS.register("lenet")(LeNet)
IMAGE_MODELS.register("resnet-mini")(ResNetMini)


@dataclass(frozen=True)
class ImageModelSpec:
    """What the gradient file records about the victim's image model."""

    name: str  # a name in IMAGE_MODELS, or a class name for a user module
    family: str
    num_labels: int
    input_shape: tuple[int, int, int]  # (C, H, W) the model takes
    mean: tuple[float, ...]  # per-channel normalisation: model input = (pixel - mean) / std
    std: tuple[float, ...]
    init_seed: int  # -1: a user module, whose weights the attacker must be handed
    config_hash: str
    weights_hash: str
    task: str = "classify"

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "input_shape": list(self.input_shape), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class ImageTarget:
    """The attacker's (or victim's) copy of an image classifier with its input conventions."""

    model: nn.Module
    spec: ImageModelSpec

    @property
    def modality(self) -> str:
        return "image"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def num_classes(self) -> int:
        return self.spec.num_labels

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std [1, C, 1, 1] on the device of `like`."""
        c = self.input_shape[0]
        return (torch.tensor(self.spec.mean, device=like.device).view(1, c, 1, 1),
                torch.tensor(self.spec.std, device=like.device).view(1, c, 1, 1))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], [B, C, H, W] -> the model's input."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalise(self, inputs: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def output_layer(self) -> tuple[str, str | None]:
        """Names of the weight and bias (or None) of the last linear layer producing the logits."""
        return output_layer(self.model, self.num_classes)

    def matching_problem(self, observation, **options):
        from .problem import ImageMatchingProblem

        return ImageMatchingProblem(self, observation, **options)


def _normalisation(channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(m) for m in (mean if mean is not None else [0.0] * channels))
    std = tuple(float(s) for s in (std if std is not None else [1.0] * channels))
    if len(mean) == 1 and channels > 1:
        mean = mean * channels
    if len(std) == 1 and channels > 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise InputError(f"normalisation needs {channels} means and stds, got {len(mean)} and {len(std)}")
    if any(s <= 0 or not math.isfinite(s) for s in std):
        raise InputError("normalisation stds must be positive")
    return mean, std


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_image_model(name: str | None = None, *, num_classes: int = 100, channels: int = 3, size: int = 32,
                     init_seed: int = 0, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> ImageTarget:
    """Build registered model `name` (default lenet) for [channels, size, size] inputs and
    `num_classes` classes, its weights drawn under `init_seed`; eval mode."""
    name = name or DEFAULT_IMAGE_MODEL
    builder = IMAGE_MODELS.get(name)
    if num_classes < 2:
        raise InputError("an image classifier needs at least 2 classes")
    if channels < 1 or size < 4:
        raise InputError(f"unsupported input shape {channels}x{size}x{size} (need >= 1 channel, >= 4 pixels)")
    if init_seed < 0:
        raise InputError("the init seed must be >= 0")
    with seeded(init_seed):  # leaves the caller's RNG streams as they were
        model = builder(channels, size, num_classes)
    model.eval()
    mean, std = _normalisation(channels, mean, std)
    spec = ImageModelSpec(name=name, family=name, num_labels=num_classes, input_shape=(channels, size, size),
                          mean=mean, std=std, init_seed=init_seed,
                          config_hash=_hash({"name": name, "channels": channels, "size": size,
                                             "classes": num_classes}),
                          weights_hash=weights_hash(model))
    return ImageTarget(model, spec)


def target_from_module(module: nn.Module, input_shape: Sequence[int], *, num_classes: int | None = None,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       name: str | None = None) -> ImageTarget:
    """Wrap a user's classifier taking [B, *input_shape] and returning logits [B, num_classes]."""
    if isinstance(module, ImageTarget):
        return module
    if not isinstance(module, nn.Module):
        raise InputError(f"expected a torch.nn.Module image classifier, got {type(module).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    try:
        with torch.no_grad(), model_mode(module, train=False):
            logits = module(torch.zeros(1, *shape, device=module_device(module)))
    except Exception as exc:  # a user module that rejects its declared input shape
        raise InputError(f"the module does not take inputs of shape {shape}: {str(exc).splitlines()[0]}") from None
    if not torch.is_tensor(logits) or logits.ndim != 2:
        raise InputError("the module must return logits shaped [batch, classes]")
    found = int(logits.shape[1])
    if num_classes is not None and num_classes != found:
        raise InputError(f"the module returns {found} logits, not {num_classes}")
    output_layer(module, found)
    mean_, std_ = _normalisation(shape[0], mean, std)
    cls = type(module).__name__
    spec = ImageModelSpec(name=name or cls, family=cls, num_labels=found, input_shape=shape, mean=mean_,
                          std=std_, init_seed=-1,
                          config_hash=_hash({"class": cls, "shape": shape, "classes": found,
                                             "params": [(n, list(p.shape)) for n, p in module.named_parameters()]}),
                          weights_hash=weights_hash(module))
    return ImageTarget(module, spec)


def output_layer(model: nn.Module, num_classes: int) -> tuple[str, str | None]:
    """The last nn.Linear with `num_classes` outputs: (weight name, bias name or None)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (name, module)
    if found is None:
        raise InputError(f"the model has no linear layer with {num_classes} outputs (the classifier head)")
    prefix = f"{found[0]}." if found[0] else ""
    return f"{prefix}weight", (f"{prefix}bias" if found[1].bias is not None else None)
