"""A trial's box misfit given up once it cannot be kept (`exact-update`'s option `repair_cutoff`, session 47; on).

Why (`recipes/measured/fedavg_memo_s47`, cProfile, RT b4 K 8 lr 1e-5 dev 0 at 300 CPU s): of the token repair's 372
profiled s, 117 (31%) went to each trial's batch mean (`BoxRepair._shifted`) and box misfit (`BoxRepair.misfit`): ~9
passes over the Q/K/V weights' 2.65M float64 entries (21 MB each), where most trials end above the batch's misfit and
are dropped. The misfit is a sum of non-negative terms, so once part of it passes what a trial must stay below (the
batch's misfit; unguarded, the least offered so far, as `RepairKeep._offer` keeps only that), the trial cannot be kept.

How: the mean and the terms are made a slice at a time (`CHUNK` entries; those where the batch's own misfit is
largest first, `_order`), with the same element-wise operations in the same order as `_shifted` and `misfit` with
`inplace` (so each entry's term is the same to the bit) and the slices' sums added up; past `bound` x (1 +
`MARGIN`) the trial is given up (inf). A trial that gets through all slices has its whole mean in the scratch buffer
and its misfit summed there by `misfit` as before: the same value to the bit. The margin covers the two sums'
different order (float64: ~1e-13 relative over 2.65M non-negative terms; float32, `repair_float32`: ~1e-6), so a
trial given up would have summed to `bound` or more and would not have been kept: the same decisions.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: entries a slice (1 MB of float64; MiniLM's Q/K/V: 21 slices, each ~1.1x a plain pass's time a slice)
CHUNK = 1 << 17
#: a trial is given up once its partial misfit passes bound x (1 + MARGIN) (per dtype; see the module doc)
MARGIN = {torch.float64: 1e-9, torch.float32: 1e-4}


def mean_into(buf: torch.Tensor, changes: Sequence[tuple[torch.Tensor, torch.Tensor]], total: torch.Tensor, size: int,
              i: int = 0, j: int | None = None) -> torch.Tensor:
    """`buf[i:j]` made `total[i:j]` + (g1 - own1 + g2 - own2 ...)[i:j] / `size`, summed left to right (`changes`:
    (new gradient, the sentence's own) each): `BoxRepair._shifted` with `inplace` (the whole range) and
    `cut_misfit` (a slice) both, so each entry is the same to the bit. Returns that slice of `buf`."""
    b = buf[i:j]
    torch.sub(changes[0][0][i:j], changes[0][1][i:j], out=b)
    for g, own in changes[1:]:
        b.add_(g[i:j]).sub_(own[i:j])
    return b.div_(size).add_(total[i:j])


def box_terms(G: torch.Tensor, U: torch.Tensor, half: torch.Tensor, tmp: torch.Tensor) -> float:
    """sum of relu(|G - U| - half)^2, made in the scratch `tmp` (all four of one shape): `BoxRepair.misfit` with
    `inplace` (the whole range), `cut_misfit` and `_order` (a slice each). x * x is how torch squares."""
    torch.sub(G, U, out=tmp)
    return float(tmp.abs_().sub_(half).relu_().mul_(tmp).sum())


def cut_misfit(repair: Any, changes: Sequence[tuple[torch.Tensor, torch.Tensor]], bound: float) -> float:
    """The box misfit of `repair`'s batch with `changes` ((new gradient, the sentence's own) each, as `_shifted`
    takes them), to the bit as `repair.misfit(repair._shifted(changes))` gives it, or inf once it cannot fall below
    `bound` (its slices summed past it). Needs `repair.inplace` (its two scratch buffers)."""
    buf, tmp = repair._buffers()
    limit, total = bound * (1.0 + MARGIN.get(repair.dtype, 1e-4)), 0.0
    for i, j in _order(repair):
        b = mean_into(buf, changes, repair._total, repair._B, i, j)
        total += box_terms(b, repair.U[i:j], repair.half[i:j], tmp[i:j])
        if total > limit:
            return float("inf")
    return repair.misfit(buf)


def _order(repair: Any) -> list[tuple[int, int]]:
    """The slices (start, end) of `repair`'s entries, those where the batch's own misfit is largest first (a trial
    changes one or two sentences of the batch, so its misfit is largest where the batch's is); made again when the
    batch's mean (`repair._total`, a new tensor at each change kept or `begin`) is another. RT b4 K 8 lr 1e-5 dev 0
    (`cutoff_probe.py.txt`, 1,015 trials, 21 slices): in the Q/K/V order the trials summed 99% of the slices, this
    way 64%; 949 of them were given up."""
    if getattr(repair, "_cut_total", None) is not repair._total:
        n, tmp = repair.U.numel(), repair._buffers()[1]
        spans = [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
        own = [box_terms(repair._total[i:j], repair.U[i:j], repair.half[i:j], tmp[i:j]) for i, j in spans]
        repair._cut_total, repair._cut_order = repair._total, [spans[k] for k in
                                                               sorted(range(len(spans)), key=lambda k: -own[k])]
    return repair._cut_order
