"""The block sweeps' screen read on one sentence's own [CLS] direction (`exact-update`'s option
`repair_block_peeled`, #15, session 47, off).

The repair's screen (`update_cls.ClsSpans.score`) scores a trial sentence by how far its last-layer [CLS] inputs lie
from the rank-B spans of the whole update: a wrong sentence can lean on the other sentences' directions there. Near
the end of a repair most sentences are right, and the others' share of a [CLS] site can be taken out: the pooler's
dense map has the weight gradient sum_s e_s h_s^T (one rank-one term per sentence, h_s its [CLS] output), and its
float32 rounding box is narrow (rms half-width 0.015 of U's rms entry at lr 1e-5; `update_cls.POOLER`), so B U less
the other sentences' own gradients is sentence b's term to within the box, and its top right singular vector is b's
[CLS] output direction. A trial for b is scored by its [CLS] output's relative residual off that one direction.

Measured (ground truth, scratch, `recipes/measured/fedavg_keep_s47/`): MiniLM, SST-2 dev batch 0 of 4, K 8, lr 1e-5,
session 46's 1000 CPU s end (three sentences exact, the 44-token one with 22 tokens out of order): the direction so
read is the true one to |cos| 1.0000 (the box fit of the residual gives the same; the last layer's attention-output
and feed-forward sites, fitted in their wide boxes, 0.9999 and 0.9998). The truth scores -3.04 (log10) against the
end's -1.18. Of the 44-token sentence's 5,698 block moves the 6 that lower the box misfit rank 1, 5, 26, 37, 91 and
114 on this screen, against 17, 20, 25, 26, 40 and 89 on the rank-4 spans: the best of them (4.80e-5 from 5.00e-5)
is ranked first where the plain screen, which weighs 8, ranked it 26th. A sentence's pooler gradient is one backward
(0.026 CPU s); the direction one SVD of a 384 x 384 matrix.

Where the other sentences are wrong their errors stay in the residual, so the screen is used only in the block
sweeps (after a stall, near the end), and the box misfit still decides what is kept.

Threat model: as `attacks.update` (U, w0, K, lr; the pooler's dense map shared).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..core.seeding import model_mode


class PeeledPooler:
    """Sentence b's own [CLS] direction at the pooler (module doc) for a batch guess, and a screen on it.

    layout: the model the repair takes gradients on (the trajectory's midpoint); update: U of the pooler's dense
    weight (its name `name`)."""

    def __init__(self, layout: Any, name: str, update: torch.Tensor):
        self.layout, self.name, self.U = layout, name, update.double().to(layout.device)
        self.param = dict(layout.model.named_parameters())[name]
        self._grads: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}
        self.screens = 0

    @classmethod
    def of(cls, layout: Any, fits: Any) -> "PeeledPooler | None":
        """The screen where `layout` has a pooler whose weight's update `fits.update` (the run's
        `update_rounding.RoundingFits`) shares, else None."""
        pooled = layout.pooler()
        if pooled is None:
            return None
        name = layout.name(pooled[0].weight)
        return cls(layout, name, fits.update[name]) if name in fits.update else None

    def gradient(self, seq: Sequence[int], label: int) -> torch.Tensor:
        """One sentence's loss gradient on the pooler's dense weight (float64), the model in eval mode."""
        ids = torch.tensor([list(seq)], device=self.layout.device)
        with model_mode(self.layout.model, train=False):
            (g,) = self.layout.loss_gradient(ids, torch.tensor([int(label)], device=self.layout.device), [self.param],
                                             torch.ones_like(ids))
        return g.detach().double()

    def direction(self, seqs: Sequence[Sequence[int]], labels: Sequence[int], b: int) -> torch.Tensor:
        """[H] unit vector: the top right singular vector of B U less every other sentence's gradient. The gradients
        are kept by (sentence, label) for the batch as it stands (a block sweep asks for each of its sentences in
        turn); those of sentences no longer in it are dropped."""
        keys = [(tuple(int(t) for t in s), int(y)) for s, y in zip(seqs, labels)]
        self._grads = {k: self._grads[k] if k in self._grads else self.gradient(*k) for k in dict.fromkeys(keys)}
        R = len(seqs) * self.U
        for c, k in enumerate(keys):
            if c != b:
                R = R - self._grads[k]
        return torch.linalg.svd(R, full_matrices=False)[2][0]

    def screen(self, seqs: Sequence[Sequence[int]], labels: Sequence[int], b: int
               ) -> Callable[[list[list[int]]], list[float]]:
        """Scores (log10 of the relative residual of each trial's pooler input off b's direction; lower is better)
        for trial sentences in slot b of the batch `seqs`."""
        from .update_cls import POOLER, ClsSpans  # here: update_cls imports the repair, which imports this module

        self.screens += 1
        return ClsSpans(self.layout, {POOLER: self.direction(seqs, labels, b)[:, None]}).score


def peeled_screen(repair: Any, seqs: Sequence[Sequence[int]], b: int
                  ) -> Callable[[list[list[int]]], list[float]] | None:
    """With option `repair_block_peeled` (`repair.peeled`) and a batch of two or more, sentence b's screen on its own
    [CLS] direction (`PeeledPooler.screen`); else None (the repair's own screen)."""
    peel = getattr(repair, "peeled", None)
    if peel is None or len(seqs) < 2:
        return None
    return peel.screen(seqs, repair._labels, b)
