"""The start of the batch search (`likelihood_batch`): every sentence's likeliest filler, then the strong rows' tokens
placed (`_place`), the labels read as counts placed with them (`place_labels`: `_labelled_start`, `_carry`).

`place_layers` (0: off): each strong row's token goes to the sentence where it raises J of the embeddings and the
first N encoder layers alone (`_Guess(..., keep=N)`, the `early` round's objective, unweighted) most, not the whole J.
Why: the rows tell a token's position, not its sentence, and on the whole J the gains differ by a few percent between
sentences; on CoLA dev batch 0 of 4 at variance 1e-6 (session 41, recipes/measured/noise_b4_s41, `diag_race`) J
groups none of the 7 row tokens with their sentence-mates (0 of 4 same-sentence pairs in one slot), the first 4
layers' objective all of them (4 of 4, two groups in each other's slots), and its climb led the misfit at 40 and 120
CPU s; with the true owners at the start the defaults read 0.969 against 0.546. On SST-2 dev 0 it does not group.
"""

from __future__ import annotations

from typing import Any

from ..core.budget import current
from ..errors import InputError
from .likelihood_state import _Batch, _Guess, carried, placements


class Placements:
    """The start's placements (`likelihood_batch`'s mixin; module docstring)."""

    place_labels: str
    place_layers: int
    _gain: Any
    _seed: Any
    initial_ids: object

    def _place(self, batch: _Batch, rows: list[tuple[int, int, float]], inner: list[range], fill: list[int]
               ) -> list[tuple[int, int, int]]:
        """Every sentence's likeliest filler, then each strong row's token at its position in the
        sentence where it raises the batch likelihood (`place_layers`: the first layers' J) most (if any does);
        (token, sentence, position)."""
        for i, seq in enumerate(batch.seqs):
            options = []
            for f in fill:
                t = list(seq)
                for p in inner[i]:
                    t[p] = f
                options.append(t)
            self._seed(batch, i, options)
        taken: set[tuple[int, int]] = set()
        placed = []
        for v, p, _z in rows:
            best = None
            for i in range(len(batch.seqs)):
                if p not in inner[i] or (i, p) in taken:
                    continue
                trial = list(batch.seqs[i])
                trial[p] = v
                gain = self._place_gain(batch, i, trial)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, i, trial)
            if best is not None:
                batch.set(best[1], best[2], batch.labels[best[1]])
                taken.add((best[1], p))
                placed.append((v, best[1], p))
            if current().expired():
                break
        return placed

    def _place_gain(self, batch: _Batch, i: int, trial: list[int]) -> float:
        """J of `trial` for sentence i minus J of its guess: the whole J (the batch likelihood's change), or with
        `place_layers` N > 0 J of the embeddings and the first N encoder layers alone (module docstring)."""
        if not self.place_layers:
            return self._gain(batch, i, [trial])[0]
        guess = _Guess(batch, i, keep=self.place_layers)
        J, _ = guess.score([trial])
        return float(J[0]) - guess.best

    def _start(self, batch: _Batch, rows: list[tuple[int, int, float]], inner: list[range], fill: list[int],
               labels: list[int], label_note: str) -> tuple[_Batch, list[tuple[int, int, int]], list, bool]:
        """The first whole guess: the given start (`initial_ids`), else the fillers and the strong rows (`_place`),
        with `place_labels` built under every placement of the labels read as counts; (the batch, the tokens
        placed, [placement, misfit] of every placement tried, whether the counts are placed by the likelihood)."""
        if self.place_labels not in ("order", "first", "rounds", "carry"):
            raise InputError("likelihood_batch.place_labels: 'order', 'first', 'rounds' or 'carry', "
                             f"got {self.place_labels!r}")
        placing = self.place_labels != "order" and label_note != "known" and len(set(labels)) > 1
        if self.initial_ids is not None:
            return batch, [], [], placing
        if placing and self.place_labels != "carry":
            return (*self._labelled_start(batch, rows, inner, fill, labels), placing)
        return batch, self._place(batch, rows, inner, fill), [], placing

    def _labelled_start(self, batch: _Batch, rows: list[tuple[int, int, float]], inner: list[range],
                        fill: list[int], labels: list[int]) -> tuple[_Batch, list[tuple[int, int, int]], list]:
        """`place_labels`: the start (`_place`) built under every distinct placement of the counts `labels`;
        (the likeliest start by the batch misfit, its placed tokens, [placement, misfit] of every one tried)."""
        best, tried = None, []
        for ys in placements(labels):
            trial = _Batch(batch.layout, batch.shared, batch.seqs, ys, batch.clip)
            placed = self._place(trial, rows, inner, fill)
            fit = trial.misfit()
            tried.append([ys, fit])
            if best is None or fit < best[0]:
                best = (fit, trial, placed)
            if current().expired():
                break
        return best[1], best[2], tried

    def _carry(self, batch: _Batch, labels: list[int], lengths: list[int], pad: int, specials: bool
               ) -> tuple[_Batch, bool, list]:
        """`place_labels="carry"`: every distinct placement of the counts `labels`, the guesses carried with
        their labels (`likelihood_state.carried`); (the likeliest by the batch misfit, whether it moved,
        [placement, misfit] of every one tried)."""
        best, tried = (batch.misfit(), batch), []
        for ys in placements(labels):
            if ys == batch.labels:
                tried.append([ys, best[0]])
                continue
            seqs = carried(batch.seqs, batch.labels, ys, lengths, pad, specials)
            trial = _Batch(batch.layout, batch.shared, seqs, ys, batch.clip)
            fit = trial.misfit()
            tried.append([ys, fit])
            if fit < best[0]:
                best = (fit, trial)
            if current().expired():
                break
        return best[1], best[1] is not batch, tried

