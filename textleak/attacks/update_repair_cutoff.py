"""A trial's box misfit given up once it cannot be kept (`exact-update`'s option `repair_cutoff`, off; session 47).

Why (`recipes/measured/fedavg_memo_s47`, cProfile, RT b4 K 8 lr 1e-5 dev 0 at 300 CPU s): of the token repair's 372
profiled s, 117 (31%) went to each trial's batch mean (`BoxRepair._shifted`) and box misfit (`BoxRepair.misfit`): ~9
passes over the Q/K/V weights' 2.65M float64 entries (21 MB each), where most trials end above the batch's misfit and
are dropped. The misfit is a sum of non-negative terms, so once part of it passes what a trial must stay below (the
batch's misfit; unguarded, the least offered so far, as `RepairKeep._offer` keeps only that), the trial cannot be kept.

How: the mean and the terms are made a slice at a time (`CHUNK` entries, which stay in cache), with the same
element-wise operations in the same order as `_shifted` and `misfit` with `inplace` (so each entry's term is the same
to the bit) and the slices' sums added up; past `bound` x (1 + `MARGIN`) the trial is given up (inf). A trial that
gets through all slices has its whole mean in the scratch buffer and its misfit summed there by `misfit` as before:
the same value to the bit. The margin covers the two sums' different order (float64: ~1e-13 relative over 2.65M
non-negative terms; float32, `repair_float32`: ~1e-6), so a trial given up would have summed to `bound` or more
and would not have been kept: the same decisions.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: entries a slice (1 MB of float64: the slice's few buffers stay in a core's cache)
CHUNK = 1 << 17
#: a trial is given up once its partial misfit passes bound x (1 + MARGIN) (per dtype; see the module doc)
MARGIN = {torch.float64: 1e-9, torch.float32: 1e-4}


def cut_misfit(repair: Any, changes: Sequence[tuple[torch.Tensor, torch.Tensor]], bound: float) -> float:
    """The box misfit of `repair`'s batch with `changes` ((new gradient, the sentence's own) each, as `_shifted`
    takes them), to the bit as `repair.misfit(repair._shifted(changes))` gives it, or inf once it cannot fall below
    `bound` (its slices summed past it). Needs `repair.inplace` (its two scratch buffers)."""
    buf, tmp = repair._buffers()
    limit, total = bound * (1.0 + MARGIN.get(repair.dtype, 1e-4)), 0.0
    for i in range(0, buf.numel(), CHUNK):
        j = min(i + CHUNK, buf.numel())
        b, t = buf[i:j], tmp[i:j]
        torch.sub(changes[0][0][i:j], changes[0][1][i:j], out=b)
        for g, own in changes[1:]:
            b.add_(g[i:j]).sub_(own[i:j])
        b.div_(repair._B).add_(repair._total[i:j])
        torch.sub(b, repair.U[i:j], out=t)
        total += float(t.abs_().sub_(repair.half[i:j]).relu_().mul_(t).sum())
        if total > limit:
            return float("inf")
    return repair.misfit(buf)
