"""Re-seating of the batch search's sentences (`likelihood_batch.reseat`): the contents of up to K slots permuted at
once (three slots in a cycle, two exchanges together, four in a cycle, ...), each cut or padded to its new slot's
length as `likelihood_relocate` fits them; the permutation of least batch misfit taken where the misfit falls;
`Reseats`, a mixin of `BatchLikelihoodSearch`.

Why: an exchange of two slots (`likelihood_relocate`) cannot leave a joint optimum where several sentences stand
in slots of other lengths at once. CoLA dev batch 1 of 4 at variance 1e-6 (slots of 7, 8, 14, 17 tokens; session
34, noise_b4_s34/diag_endstate): "john carried to the door" in the 7-token slot, "fred runs mary the marathons" in
the 8-token one, "who did plato loved prove" in the 17-token one, fragments of the 17-token sentence in the 14-token
one; slots 0 and 1 both at the truth (the others as they ended) are 24.6k nats less likely, slots 2 and 3 10.8k,
all four 28.4k likelier: no move of two slots, nor one of two sentences, leaves it.

The move: for each ordered pair (content j, slot i != j), j's inner tokens fitted to slot i's inner length
(`likelihood_relocate.fitted`), the option likeliest against slot i's target as the batch stands taken (one scorer
pass, at slot i's label and, where the labels were read as counts, also at j's); then every permutation moving 2..K
slots (with the labels staying with the slots, and where counted and they differ, also carried with the contents:
the counts stay) scored by the batch misfit ||G - mean g||^2 (the moved slots' gradients computed afresh, nothing
kept). The least, if below the misfit before, is taken, and each moved slot is fitted again against its new target
(its fit is among the options, so the misfit does not rise). Repeated until no permutation lowers the misfit or
`stop()`. Cost at batch 4, K = 4: 12 scorer passes (24 with carried labels), 23 permutations (46) of <= 4 gradients
and one misfit each. Shapes: sentences are token-id lists of their declared lengths.
"""

from __future__ import annotations

import time
from itertools import combinations, permutations
from typing import Any, Callable, Iterator

import torch

from ..core.budget import current
from .likelihood_relocate import in_slot
from ..text.ghost import GhostScorer
from .likelihood_state import _Batch, _J


def seatings(B: int, most: int) -> Iterator[dict[int, int]]:
    """Every permutation of B slots that moves 2..`most` of them, as {slot: the slot whose contents it takes}
    (moved slots only): the exchanges, then the 3-cycles, then moves of 4 (two exchanges, 4-cycles), ..."""
    for m in range(2, min(most, B) + 1):
        for moved in combinations(range(B), m):
            for order in permutations(moved):
                if all(s != t for s, t in zip(moved, order)):
                    yield dict(zip(moved, order))


class Reseats:
    """The permutation move over several slots (the module docstring)."""

    def _reseated(self, batch: _Batch, inner: list[range], pad: int, counted: bool, placed: list[tuple[int, int, int]],
                  stop: Callable[[], bool] | None = None) -> dict[str, Any] | None:
        """The move (`reseat` slots at most; labels carried too where `counted`) until no permutation lowers the
        misfit or `stop()` (default: the current budget), placed tokens pinned again; what it did: the permutations
        taken ({slot: slot whose contents it took}, labels carried or not), the batch misfit before and after, the
        permutations scored, the labels after, its CPU s. None where `reseat` < 2 (off)."""
        if self.reseat < 2:
            return None
        c0, before, stop = time.process_time(), batch.misfit(), stop or current().expired
        taken, scored = [], 0
        for _ in range(len(batch.seqs)):
            best, n = self._seating(batch, inner, pad, counted, stop)
            scored += n
            if best is None:
                break
            self._seat(batch, inner, pad, *best)
            taken.append([{str(i): j for i, j in best[0].items()}, best[1]])  # slot: the slot it took from
            if stop():
                break
        self._pin(batch, placed)
        return {"taken": taken, "misfit_before": before, "misfit_after": batch.misfit(), "scored": scored,
                "labels": list(batch.labels), "cpu_seconds": time.process_time() - c0}

    def _seating(self, batch: _Batch, inner: list[range], pad: int, counted: bool, stop: Callable[[], bool]
                 ) -> tuple[tuple[dict[int, int], bool, dict] | None, int]:
        """The permutation (and whether the labels go with the contents) of least batch misfit below the current
        one, the contents fitted to their new slots against the targets as the batch stands (None: none is lower);
        how many were scored."""
        fits: dict[tuple[int, int, int], list[int]] = {}
        now, best, scored = batch.misfit(), None, 0
        same = sorted((tuple(s), y) for s, y in zip(batch.seqs, batch.labels))
        for seating in seatings(len(batch.seqs), self.reseat):
            for carry in (False, True) if counted and any(batch.labels[i] != batch.labels[j]
                                                          for i, j in seating.items()) else (False,):
                ys = {i: batch.labels[j] if carry else batch.labels[i] for i, j in seating.items()}
                seqs = {i: self._fit(batch, inner, pad, fits, j, i, ys[i]) for i, j in seating.items()}
                after = [(tuple(seqs.get(i, s)), ys.get(i, y))
                         for i, (s, y) in enumerate(zip(batch.seqs, batch.labels))]
                if sorted(after) == same:  # the same sentences at the same labels: the same batch gradient
                    continue
                own = [batch._own(seqs[i], ys[i]) if i in seating else g for i, g in enumerate(batch.own)]
                fit, scored = batch.misfit(own), scored + 1
                if fit < now and (best is None or fit < best[0]):
                    best = (fit, (dict(seating), carry, seqs))
                if stop():
                    return (best[1] if best else None), scored
        return (best[1] if best else None), scored

    def _fit(self, batch: _Batch, inner: list[range], pad: int, fits: dict, j: int, i: int, y: int) -> list[int]:
        """Slot j's contents in slot i at label y: its inner tokens fitted to slot i's inner length, the option
        likeliest against slot i's target as the batch stands (cached in `fits`)."""
        if (j, i, y) not in fits:
            options = in_slot(batch.seqs, inner, pad, j, i)
            scorer = GhostScorer(batch.layout, batch.target(i))
            J = _J(scorer(torch.tensor(options), torch.full((len(options),), y)), batch.clip)
            fits[j, i, y] = options[int(J.argmax())]
        return fits[j, i, y]

    def _seat(self, batch: _Batch, inner: list[range], pad: int, seating: dict[int, int], carry: bool,
              seqs: dict[int, list[int]]) -> None:
        """The permutation `seating` taken (labels carried with `carry`): every moved slot given its contents as
        scored (`seqs`), then each fitted again against its new target (`_seed`; its fit is among the options)."""
        old = [list(s) for s in batch.seqs]
        ys = {i: batch.labels[j] if carry else batch.labels[i] for i, j in seating.items()}
        for i in seating:
            batch.set(i, seqs[i], ys[i])
        for i, j in seating.items():
            self._seed(batch, i, in_slot(old, inner, pad, j, i))
