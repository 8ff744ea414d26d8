"""Images as a gradient-matching problem: dummy pixels and soft labels through a classifier.

Variables:
    pixels       [B, C, H, W] dummy model inputs (normalised space, as the model sees them)
    label_logits [B, K] softmaxed into soft labels; absent when labels are known or recovered
The victim's loss is the mean cross-entropy over the batch, so the dummy loss is too.

Options:
    labels   class per image recovered by the attack (e.g. iDLG); overrides joint optimisation
    label_source  how `assumed` describes those labels
    tv       weight of the total-variation prior (Inverting Gradients), 0 = none
    box      keep pixels within the valid [0, 1] range after every step (in normalised units)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..core.device import module_device
from ..core.seeding import model_mode
from ..errors import InputError, MissingKnowledgeError
from ..threat import Observation

#: decimals kept when decoding pixels into JSON (MSE resolution ~1e-9, far below any threshold)
DECIMALS = 4


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of horizontal and vertical neighbours."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def check_observation(target, observation: Observation) -> None:
    """Raise MissingKnowledgeError unless an image matching problem can be built from `observation`."""
    if observation.knowledge.batch_size is None:
        raise MissingKnowledgeError("this attack needs the batch size (declared knowledge 'batch_size')")
    matched_names(target.model, observation)


def matched_names(model: torch.nn.Module, observation: Observation, names: Sequence[str] | None = None) -> list[str]:
    params = dict(model.named_parameters())
    wanted = list(names) if names is not None else list(params)
    found = [n for n in wanted if n in params and n in observation.gradients]
    if not found:
        raise MissingKnowledgeError("the gradient file shares no parameter of this model")
    return found


class ImageMatchingProblem:
    """Dummy pixels [B, C, H, W] (and soft labels) on the model's device; random draws come from a
    CPU generator, so a seed means the same start on every device."""

    def __init__(self, target, observation: Observation, *, labels: Sequence[int] | None = None,
                 label_source: str = "recovered", tv: float = 0.0, box: bool = False,
                 names: Sequence[str] | None = None):
        check_observation(target, observation)
        self.target = target
        self.model = target.model
        self.device = module_device(self.model)
        self.batch_size = int(observation.knowledge.batch_size)
        self.shape = tuple(target.input_shape)
        self.num_classes = int(target.num_classes)
        self.names = matched_names(self.model, observation, names)
        params = dict(self.model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.tv = float(tv)
        self.box = bool(box)
        low = target.normalise(torch.zeros(1, *self.shape, device=self.device))
        high = target.normalise(torch.ones(1, *self.shape, device=self.device))
        self.low, self.high = torch.minimum(low, high), torch.maximum(low, high)
        source = self._labels(labels, label_source, observation.knowledge)
        self.assumed = {"batch_size": "known", "labels": source}
        if self.tv:
            self.assumed["prior"] = f"total variation x {self.tv:g}"
        if self.box:
            self.assumed["pixels"] = "boxed to the valid range"

    def _labels(self, labels: Sequence[int] | None, label_source: str, know) -> str:
        """Fix the labels given (by the attack) or declared; None leaves them to the optimiser."""
        if labels is not None:
            given, source = labels, label_source
        elif know.labels is not None:
            given, source = know.labels, "known"
        else:
            self.known_labels = None
            return "optimised jointly"
        self.known_labels = torch.tensor([int(y) for y in given], device=self.device)
        if len(self.known_labels) != self.batch_size:
            raise InputError(f"{len(self.known_labels)} labels for a batch of {self.batch_size}")
        if not ((0 <= self.known_labels) & (self.known_labels < self.num_classes)).all():
            raise InputError(f"labels must lie in 0..{self.num_classes - 1}")
        return source

    # -- MatchingProblem -------------------------------------------------------------------
    def init(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        pixels = torch.randn(self.batch_size, *self.shape, generator=generator)
        variables = {"pixels": pixels.to(self.device).requires_grad_()}
        if self.known_labels is None:
            logits = torch.randn(self.batch_size, self.num_classes, generator=generator)
            variables["label_logits"] = logits.to(self.device).requires_grad_()
        return variables

    def soft_labels(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.known_labels is not None:
            return F.one_hot(self.known_labels, self.num_classes).float()
        return variables["label_logits"].softmax(-1)

    def loss(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with model_mode(self.model, train=False):
            logits = self.model(variables["pixels"])
        return -(self.soft_labels(variables) * logits.log_softmax(-1)).sum(-1).mean()

    def gradients(self, variables: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(self.loss(variables), self.params, create_graph=True))

    def regulariser(self, variables: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        return self.tv * total_variation(variables["pixels"]) if self.tv else 0.0

    def project(self, variables: Mapping[str, torch.Tensor]) -> None:
        if self.box:
            with torch.no_grad():
                variables["pixels"].copy_(torch.maximum(torch.minimum(variables["pixels"], self.high), self.low))

    def decode(self, variables: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Images in [0, 1] as nested lists [B][C][H][W] (rounded), and one label per image."""
        with torch.no_grad():
            images = self.target.denormalise(variables["pixels"].detach()).nan_to_num(0.5).clamp(0, 1)
            labels = self.soft_labels(variables).nan_to_num(0.0).argmax(-1)
        return {"images": images.round(decimals=DECIMALS).tolist(), "labels": labels.tolist(),
                "shape": list(self.shape)}
