"""Choosing the device work runs on: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`.

`resolve_device` turns a user's `--device` value (or `device=` in Python) into a `torch.device`
and refuses, in one line, a CUDA device that this machine does not have.
"""

from __future__ import annotations

import torch

from ..errors import InputError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: "str | torch.device | None" = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise InputError(f"bad device {spec!r}; choose auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise InputError(f"device {spec!r} asked for, but no CUDA GPU is available here "
                             "(torch.cuda.is_available() is False); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device(text)
    raise InputError(f"bad device {spec!r}; choose auto, cpu, cuda or cuda:N")
