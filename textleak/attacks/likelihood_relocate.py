"""Whole-sentence relocations of the batch search (`likelihood_batch.relocate`): the contents of two slots of
different declared lengths exchanged, each cut or padded to its new slot's length, kept only if the batch misfit
falls; `Relocations`, a mixin of `BatchLikelihoodSearch`.

Why: a slot's length is declared, but the embedding rows, the early layers and the head of a same-label sentence
barely depend on which slot holds its tokens (positions 1..n are the same positions in a slot of 7 and in one of
9), so a sentence often assembles in a slot of another length, and the sentence that belongs there cannot follow
it. CoLA dev batch 0 of 4 at variance 1e-6 (lengths 9 7 13 7; sessions 29-30, four end states of `auto`): "she has
kissed her 'ly." and "she has kissed her. she hate" in the 9-token slot of "I don't want trouble.", garbage ("who
bill “..") in the 7-token slot that is really hers, and "trouble" taken by the 13-token slot. No token-level move
fixes that: the same-position exchanges (`likelihood_exchange`) keep every token's position, and a climb of one
sentence moves one token, or two, at a time against the others as they stand.

The move, for a pair of slots a, b of different lengths: b's inner tokens (between [CLS] and [SEP] where the
sentences have them) fitted to a's inner length (a block of the filler inserted at any one place, or a run of
tokens dropped at any one place), the likeliest option against a's target taken; then a's former tokens fitted to
b likewise against b's target (a standing as just placed); kept only if the batch misfit ||G - mean g||^2 falls,
else both restored. Where the labels were read as counts (not known) and the two slots' labels differ, the
exchange is also tried with the labels going with the contents (the counts stay): a sentence assembled at the
wrong label in a slot of the wrong length (SST-2 dev batch 0: its one label-1 sentence, 12 tokens, assembled in the
18-token slot the in-order read gives label 1; sessions 27-29) is carried with its label to its own length.
Cost per pair: two scorer passes over at most ~len + 1 options each and two misfits (twice with the labels).
Shapes: sentences are token-id lists of their declared lengths.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..core.budget import Budget, current
from ..errors import InputError
from .likelihood_state import _Batch


def relocation(value: Any) -> str:
    """`likelihood_batch.relocate` as a mode: "rounds" (True: after every round), "last" (once, after the last
    round) or "off" (False)."""
    if value is True or value == "rounds":
        return "rounds"
    if value is False or value is None or value == "off":
        return "off"
    if value == "last":
        return "last"
    raise InputError(f"likelihood_batch.relocate: true, false or 'last', got {value!r}")


def enclosing(budget: Budget) -> Callable[[], bool]:
    """Whether the budget enclosing `budget` (itself where none encloses it) has run out: the stop of the move after
    the last round, whose stage budget the last climb spends by design (it takes all that is left)."""
    return (budget.parent or budget).expired


def fitted(body: list[int], k: int, pad: int) -> list[list[int]]:
    """`body` (inner tokens) fitted to k tokens: itself if it has k; else a block of k - len(body) `pad` tokens
    inserted at each place, or a run of len(body) - k tokens dropped at each place (each distinct option once)."""
    m = len(body)
    if m == k:
        return [list(body)]
    if m < k:
        options = [body[:t] + [pad] * (k - m) + body[t:] for t in range(m + 1)]
    else:
        options = [body[:t] + body[t + m - k:] for t in range(k + 1)]
    return [list(o) for o in dict.fromkeys(tuple(o) for o in options)]


class Relocations:
    """Whole-sentence exchanges between slots of different lengths (the module docstring)."""

    def _relocate(self, batch: _Batch, inner: list[range], pad: int, labels_move: bool = False,
                  stop: Callable[[], bool] | None = None, fillers: tuple[int, ...] = ()) -> int:
        """Every pair of slots of different lengths tried once (`_exchanged`; with `labels_move`, where their labels
        differ, also with the labels carried, the likelier of the two kept; each slot offered its `fillers` too),
        until `stop()` (default: the current budget has run out); how many exchanges were kept."""
        kept, B, stop = 0, len(batch.seqs), stop or current().expired
        for a in range(B):
            for b in range(a + 1, B):
                if len(inner[a]) == len(inner[b]):
                    continue
                old = _held(batch, (a, b))
                best, before = None, batch.misfit()
                for carry in (False, True) if labels_move and batch.labels[a] != batch.labels[b] else (False,):
                    after = self._exchanged(batch, a, b, inner, pad, carry, fillers)
                    if after < before and (best is None or after < best[0]):
                        best = (after, _held(batch, (a, b)))
                    _hold(batch, old)
                if best is not None:
                    _hold(batch, best[1])
                    kept += 1
                if stop():
                    return kept
        return kept

    def _relocated(self, batch: _Batch, inner: list[range], fill: list[int], counted: bool,
                   placed: list[tuple[int, int, int]], stop: Any = None) -> dict[str, Any]:
        """The whole-sentence move (`likelihood_relocate`; labels carried where `counted`, each slot offered the
        fillers with `relocate_fill`, until `stop()`), placed tokens pinned again; what it did: exchanges kept, the
        batch misfit ||G - mean g||^2 before and after, the labels after, its CPU s, the sentences (token ids) and
        labels before (`seqs_before`, `labels_before`: the state a probe can take up) and after."""
        c0, before, held = time.process_time(), batch.misfit(), [list(s) for s in batch.seqs]
        was = list(batch.labels)
        moved = self._relocate(batch, inner, fill[0], counted, stop, tuple(fill) if self.relocate_fill else ())
        self._pin(batch, placed)
        return {"kept": moved, "misfit_before": before, "misfit_after": batch.misfit(), "labels": list(batch.labels),
                "cpu_seconds": time.process_time() - c0, "seqs_before": held, "labels_before": was,
                "seqs_after": [list(s) for s in batch.seqs]}

    def _exchanged(self, batch: _Batch, a: int, b: int, inner: list[range], pad: int, carry: bool,
                   fillers: tuple[int, ...] = ()) -> float:
        """Slots a and b given each other's contents (with `carry`, their labels too), each fitted to its new
        length (`fitted`), or a filler of `fillers` (every inner token that one: a slot that gives its sentence
        away need not take the other's fragments), the likeliest option against the slot's target (`_seed`);
        the batch misfit after."""
        old = {a: list(batch.seqs[a]), b: list(batch.seqs[b])}
        now = {a: batch.labels[b], b: batch.labels[a]} if carry else {a: batch.labels[a], b: batch.labels[b]}

        def options(i: int, src: int, filled: bool = True) -> list[list[int]]:
            out = in_slot(old, inner, pad, src, i)
            for f in fillers if filled else ():
                out.append([f if p in inner[i] else v for p, v in enumerate(old[i])])
            return out

        batch.set(b, options(b, a, False)[-1], now[b])  # a's tokens in b (padded or cut at the end) meanwhile
        if carry:
            batch.set(a, old[a], now[a])
        self._seed(batch, a, options(a, b))
        self._seed(batch, b, options(b, a))
        return batch.misfit()


def in_slot(seqs: Any, inner: list[range], pad: int, j: int, i: int) -> list[list[int]]:
    """Sentence j's inner tokens fitted to slot i's inner length (`fitted`), each in slot i's frame (`seqs[i]`;
    `seqs`: the sentences, a list or a dict by slot)."""
    out = []
    for body in fitted([seqs[j][p] for p in inner[j]], len(inner[i]), pad):
        t = list(seqs[i])
        for p, v in zip(inner[i], body):
            t[p] = v
        out.append(t)
    return out


def _held(batch: _Batch, slots: tuple[int, ...]) -> dict[int, tuple]:
    """The sentences, labels and own gradients of `slots`, to be put back by `_hold` (no gradient computed again)."""
    return {i: (list(batch.seqs[i]), batch.labels[i], batch.own[i]) for i in slots}


def _hold(batch: _Batch, held: dict[int, tuple]) -> None:
    """The slots of `held` (`_held`) as they were when held."""
    for i, (seq, label, own) in held.items():
        batch.seqs[i], batch.labels[i], batch.own[i] = list(seq), label, own
