"""Trial gradients a chunk at a time in the token repair (`update_repair.BoxRepair.keep_best`, `exact-update`'s option
`repair_batch`; session 44; off by default).

Why (measured, `recipes/measured/fedavg_batch_s44/`): a repair trial is one sentence's Q/K/V weight gradient (a forward
and a backward through MiniLM) and its box misfit. On MiniLM at one thread a sentence's gradient took 44-48 ms alone
and 20-29 ms a sentence 8 at a time this way (16 and 44 tokens: 1.6-2.2x), while the misfit took 11 ms. The trials that
`keep_best` weighs are one sentence's variants (a token substituted, swapped, slid or a block moved), all of one
length, so they can go through the model together; at small learning rates the repair is most of the attack's time
and runs out (SST-2 batch 4, K 8, lr 1e-5, dev 0: 640 of 800 CPU s, `ran_out`).

How: the trials of one length go through the model together, a chunk at a time, in eval mode with every token attended,
as `BoxRepair.gradient` takes one. The loss (the classifier's mean over the chunk, times its size: each sentence's own
loss summed) is differentiated once with respect to each shared Q/K/V projection's output, and a sentence's weight
gradient is its own output gradient times its own input, summed over its positions (`einsum`): the per-sample
gradient rule of Opacus' linear layers (`GradSampleModule`). No sentence attends to another and eval mode has no
dropout, so each sentence's part is its own loss's gradient. Values agree with `BoxRepair.gradient` to float32
rounding, not to the bit (the sums run in another order), hence an option, paired before any default.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..core.budget import now as budget_now


class TrialGradients:
    """Per-sentence gradients of the loss on the Q/K/V weights `names` of `layout`'s model (each flattened in that
    order and concatenated, as `dtype`: float64, or float32 with `repair_float32`, as `BoxRepair.gradient` gives
    them), for sentences of one length `chunk` at a time. Classification only (one label a sentence)."""

    def __init__(self, layout: Any, names: Sequence[str], chunk: int, dtype: torch.dtype = torch.float64):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.layout, self.names, self.chunk, self.dtype = layout, list(names), int(chunk), dtype
        modules = dict(layout.model.named_modules())
        self.modules = [modules[n.rsplit(".", 1)[0]] for n in self.names]

    def weigh(self, trials: Sequence[Sequence[int]], label: int, deadline: float
              ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(trial, its gradient) for each of `trials` (sentences of one length, one `label`), a chunk at a time, in
        their order; none once the budget's clock has reached `deadline` (checked before each chunk)."""
        for part in chunks([list(t) for t in trials], self.chunk, deadline):
            yield from zip(part, self.gradients(part, [label] * len(part)))

    def gradients(self, seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> list[torch.Tensor]:
        """Each sentence's gradient, in order: one forward and one backward for those of each length."""
        out: list[torch.Tensor | None] = [None] * len(seqs)
        for n in dict.fromkeys(len(s) for s in seqs):
            at = [i for i, s in enumerate(seqs) if len(s) == n]
            for i, g in zip(at, self._same_length([seqs[i] for i in at], [labels[i] for i in at])):
                out[i] = g
        return out  # type: ignore[return-value]

    def _same_length(self, seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> list[torch.Tensor]:
        """`gradients` for sentences of one length."""
        device = self.layout.device
        ids = torch.tensor([list(s) for s in seqs], device=device)
        y = torch.tensor([int(v) for v in labels], device=device)
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        def keep(k: int, args: tuple, out: torch.Tensor) -> None:  # a hook that returns nothing changes nothing
            seen.setdefault(k, (args[0], out))
        hooks = [m.register_forward_hook(lambda mod, args, out, k=k: keep(k, args, out))
                 for k, m in enumerate(self.modules)]
        model = self.layout.model
        was = model.training
        model.eval()
        try:
            with torch.enable_grad():
                loss = model(**self.layout.inputs(ids, torch.ones_like(ids)), labels=y).loss * len(seqs)
                outs = [seen[k][1] for k in range(len(self.modules))]
                grads = torch.autograd.grad(loss, outs)
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        parts = [torch.einsum("tlo,tli->toi", g, seen[k][0].detach()) for k, g in enumerate(grads)]
        return [torch.cat([p[t].flatten() for p in parts]).to(self.dtype) for t in range(len(seqs))]


def weighed(repair: Any, trials: Sequence[Sequence[int]], label: int, gradient: Any = None
            ) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """(trial, its gradient) for `repair.keep_best`'s trials of one sentence (its `label`), until the budget's clock
    reaches `repair._deadline`: with option `repair_batch` (`repair.batch` > 0, no `gradient` given) `repair.batch`
    at a time (`TrialGradients`), else one at a time by `gradient` (default `repair.gradient`), each counted in
    `repair.trials` either way."""
    if gradient is None and repair.batch > 0:
        for trial, g in _batcher(repair).weigh(trials, label, repair._deadline):
            repair.trials += 1
            yield trial, g
        return
    for trial in trials:
        if budget_now() >= repair._deadline:
            return
        yield trial, (gradient or repair.gradient)(trial, label)


def weighed_trades(repair: Any, trades: Sequence[tuple[list[int], list[int]]], a: int, b: int
                   ) -> Iterator[tuple[tuple[list[int], list[int]], torch.Tensor, torch.Tensor]]:
    """((x, y), x's gradient, y's) for `_exchange`'s trades of sentences a and b (x: a's new sentence, y: b's, under
    their labels), until the budget's clock reaches `repair._deadline`: with option `repair_batch` `repair.batch`
    trades at a time (each side's sentences share a length: a trade keeps both lengths), else one at a time by
    `repair.gradient`; each gradient counted in `repair.trials`."""
    la, lb = repair._labels[a], repair._labels[b]
    if repair.batch <= 0:
        for x, y in trades:
            if budget_now() >= repair._deadline:
                return
            yield (x, y), repair.gradient(x, la), repair.gradient(y, lb)
        return
    for part in chunks(trades, repair.batch, repair._deadline):
        gx = _batcher(repair).gradients([x for x, _ in part], [la] * len(part))
        gy = _batcher(repair).gradients([y for _, y in part], [lb] * len(part))
        repair.trials += 2 * len(part)
        yield from zip(part, gx, gy)


def chunks(items: Sequence[Any], size: int, deadline: float) -> Iterator[list[Any]]:
    """`items` `size` at a time (lists, in order), until the budget's clock reaches `deadline` (read before each)."""
    for i in range(0, len(items), size):
        if budget_now() >= deadline:
            return
        yield list(items[i:i + size])


def _batcher(repair: Any) -> TrialGradients:
    """`repair`'s `TrialGradients` (`repair.batch` a chunk), made once and kept in `repair._batcher`."""
    if repair._batcher is None:
        repair._batcher = TrialGradients(repair.layout, repair.names, repair.batch, repair.dtype)
    return repair._batcher
