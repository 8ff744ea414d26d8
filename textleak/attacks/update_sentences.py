"""Repairing a guessed batch sentence by sentence against a rounded FedAvg update (`exact-update`, small lr).

At lr 1e-4 on MiniLM a float32 client's rounding is as wide as half the update itself in layer 1
(`update_rounding`), and no layer-1 span test separates a true sentence from a near one: on CoLA
dev batch 4, K = 8, the search certified no sentence at all and the batch was assembled from each
length's closest miss. For the 9-token slot that was a cut of the 13-token sentence ("whenever bill
smokes , susan hates [SEP]": every token stands where the long sentence has it, and the short
sentence has a [SEP] at position 8), and the 13-token slot got a jumble; the token-by-token repair
(`update_repair`) cannot move a whole sentence, so the batch stayed wrong.

The whole update still tells whole sentences apart. Its box misfit (`update_repair.BoxRepair`: every
layer's Q/K/V gradient of the batch against the box the rounding allows around U) is a sum over
sentences of their gradients, so each sentence the search settled (its near misses, kept per
length) costs one forward and backward, and swapping one slot's sentence for another is a vector
sum. `SentenceRepair` sweeps the slots: each tries the settled sentences of its length (the
`limit` closest to the layer-1 span, the batch's other sentences excluded) and keeps the one that
lowers the batch's misfit most, until no slot changes. The token-level repair then starts from
there, and the simulation certificate (`update_sim`) still decides. Classification only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..core.budget import now as budget_now
from .update_repair import BoxRepair

#: settled sentences tried per slot (closest to the layer-1 span first)
LIMIT = 24
#: sweeps over the slots at most
SWEEPS = 3
#: token sweeps of a slot made afresh
FRESH_SWEEPS = 2


class SentenceRepair:
    """Coordinate descent over whole sentences on the box misfit (see the module doc).

    box: the run's `BoxRepair` (its gradient and misfit); limit: settled sentences tried per slot;
    sweeps: over the slots at most; fresh: token sweeps of a slot made afresh (0: none made)."""

    def __init__(self, box: BoxRepair, limit: int = LIMIT, sweeps: int = SWEEPS, fresh: int = FRESH_SWEEPS):
        self.box, self.limit, self.sweeps, self.fresh = box, limit, sweeps, fresh
        self._grads: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def gradient(self, seq: Sequence[int], label: int) -> torch.Tensor:
        key = (tuple(seq), int(label))
        if key not in self._grads:
            self._grads[key] = self.box.gradient(seq, label)
        return self._grads[key]

    def fill(self, seqs: Sequence[Sequence[int]], b: int) -> list[int]:
        """Slot b made afresh from layer 0: at each inner position the candidate closest to the
        fitted layer-0 span that no other slot holds there (ends kept)."""
        seq = list(seqs[b])
        options = self.box.options(len(seq))
        for p in range(1, len(seq) - 1):
            taken = {s[p] for c, s in enumerate(seqs) if c != b and len(s) > p}
            seq[p] = next((t for t in options[p] if t not in taken), options[p][0])
        return seq

    def options(self, near: Mapping[int, Sequence[tuple[float, Sequence[int]]]], length: int) -> list[list[int]]:
        """The `limit` distinct settled sentences of this length, closest first."""
        out: list[list[int]] = []
        for _, seq in sorted(near.get(length, []), key=lambda x: x[0]):
            if list(seq) not in out:
                out.append(list(seq))
            if len(out) >= self.limit:
                break
        return out

    def run(self, sequences: Sequence[Sequence[int]], labels: Sequence[int],
            near: Mapping[int, Sequence[tuple[float, Sequence[int]]]], deadline: float
            ) -> tuple[list[list[int]], dict[str, Any]]:
        """Sweeps over the slots, each taking the settled sentence of its length that lowers the batch's
        misfit most; returns (the sentences, a report)."""
        ys = [int(y) for y in labels]
        seqs, start = self.box.begin(sequences, ys, deadline, self.gradient)
        swaps, sweeps, changed = 0, 0, True
        while changed and sweeps < self.sweeps and budget_now() < deadline:
            changed, sweeps = False, sweeps + 1
            for b in range(len(seqs)):
                trials = [t for t in self.options(near, len(seqs[b])) if t not in seqs]
                if self.box.keep_best(seqs, b, trials, self.gradient):
                    swaps, changed = swaps + 1, True
        best = self.box.best
        seqs, best, fresh = self.refill(seqs, ys, best, deadline) if self.fresh else (seqs, best, [])
        return seqs, {"misfit_before": start, "misfit_after": best, "sweeps": sweeps, "swaps": swaps,
                      "fresh": fresh, "sentences_scored": len(self._grads), "limit": self.limit,
                      "ran_out": budget_now() >= deadline}

    def refill(self, seqs: list[list[int]], ys: list[int], best: float, deadline: float
               ) -> tuple[list[list[int]], float, list[int]]:
        """Each slot in turn made afresh (`fill`) and repaired token by token alone (`fresh` sweeps
        of the `BoxRepair`); kept where the batch's misfit drops. Returns (the sentences, their
        misfit, the slots renewed)."""
        fresh = []
        sweeps, self.box.sweeps = self.box.sweeps, self.fresh
        try:
            for b in range(len(seqs)):
                if budget_now() >= deadline:
                    break
                trial = [self.fill(seqs, b) if c == b else s for c, s in enumerate(seqs)]
                trial, report = self.box.run(trial, ys, deadline, order=[b], exchange=False)
                if report["misfit_after"] < best:
                    seqs, best = trial, report["misfit_after"]
                    fresh.append(b)
        finally:
            self.box.sweeps = sweeps
        return seqs, best, fresh
