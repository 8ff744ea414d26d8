"""Choosing the device work runs on: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`.

`resolve_device` turns a user's `--device` value (or `device=` in Python) into a `torch.device`
and refuses, in one line, a CUDA device that this machine does not have. `on_device` runs a block
with a module on a device and moves it back afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without either."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: "str | torch.device | None") -> Iterator[torch.nn.Module]:
    """Run a block with `module` on `device` (None: where it is), then move it back where it was."""
    before = module_device(module)
    device = before if device is None else torch.device(device)
    if device != before:
        module.to(device)
    try:
        yield module
    finally:
        if device != before:
            module.to(before)


def fast_bfloat16(device: "str | torch.device") -> bool:
    """Whether `device` runs bfloat16 matrix products faster than float32: a CUDA GPU that supports
    bfloat16, or a CPU with AMX tiles (Intel Sapphire Rapids and later: MiniLM 2.5-2.7x a token under
    `torch.autocast`, session 36). Elsewhere (AVX2 alone) bfloat16 is emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # (private in torch 2.13; absent: assume no)
    return device.type == "cpu" and check is not None and bool(check())


def screen_count(value: "int | str", on: int, device: "str | torch.device") -> int:
    """A screen option's count (`slot_residuals`' `screen`, `sweep_screen`...): as given, or with "auto" `on` where
    `device` runs bfloat16 fast (`fast_bfloat16`), else 0 (emulated bfloat16 costs more than the screen saves)."""
    if value == "auto":
        return on if fast_bfloat16(device) else 0
    return int(value)
