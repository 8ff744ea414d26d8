"""Low-precision gradients: half precision (Zhu et al., DLG 2019, Sec. 5) and 8-bit quantisation.

Threat model: the victim shares its gradient in a lower precision (to save bandwidth); the
attacker reads it back as float32 and matches it as it is. The gradient file keeps float32
tensors whose values are exactly those representable in the shared precision.

`fp16`  round to IEEE half (values below ~6e-8 flush to zero, above 65504 saturate to +-inf,
        which `check_finite` then rejects — real fp16 training would have to scale the loss).
`bf16`  round to bfloat16 (8 exponent bits: no underflow, 3 significant digits).
`int8`  symmetric per-tensor quantisation: q = round(g / s) in [-127, 127], s = max|g| / 127,
        shared as q * s (the form QSGD-style compressors send, deterministic rounding).
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import DEFENCES, Defence


class _Cast(Defence):
    dtype: torch.dtype

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: g.to(self.dtype).to(g.dtype) for k, g in gradients.items()}


@DEFENCES.register("fp16")
class Float16(_Cast):
    name = "fp16"
    dtype = torch.float16


@DEFENCES.register("bf16")
class BFloat16(_Cast):
    name = "bf16"
    dtype = torch.bfloat16


@DEFENCES.register("int8")
class Int8(Defence):
    name = "int8"

    def apply(self, gradients: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = {}
        for k, g in gradients.items():
            scale = g.detach().abs().max() / 127
            if scale == 0:
                out[k] = g.clone()
                continue
            q = torch.round(g / scale).clamp(-127, 127).to(torch.int8)
            out[k] = q.to(g.dtype) * scale
        return out
