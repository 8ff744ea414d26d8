"""Sentences past the rank limit put right and screened on the last layer's sentence spans (#16):
the sentence move (`SentenceMove`, one token at a time) and the neighbour screen (`NeighbourScreen`,
short sentences and their nearest neighbours), both for `attacks.beyond_rank`.

Far past the rank limit (MiniLM, CoLA batch 64: 771 tokens, twice the width) settling on the
partial layer-1 span drifts off true sentences even when started from them (5 of 64 come back,
`recipes/beyond_rank_settle.py`), so seeds that stand one or two tokens from a sentence of the
batch, or on it, are settled away before any certificate sees them. Yet the partial span still
*ranks* tokens in their context: with the rest of a true short sentence (at most 12 tokens)
around it, the true token is the best candidate by its layer-1 residual at 71% of the positions
and among the best 5 at 91%; and the last layer's sentence spans (`leaks.sentences`: rank B,
far under the width whatever the number of tokens) tell a true sentence from one a token off
by at least 4 orders of magnitude (score -1.8 against 2.0 or more). They do not rank partly
wrong sentences (1 to 4 tokens wrong all score 3.0-3.7), so they screen, they do not guide.

The screen: a sentence (a beam seed, or what settling made of it) and its neighbours, every
single change among each position's best `top` candidates in its own context and every pair
of changes among the best `pairs`, go to the sentence spans; those that pass are handed to the
search, whose certificates (the sentence spans again and the peel) decide. Each sentence is
screened once. Short sentences are cheap on both counts (few positions; a short forward), and
each one peeled takes its tokens off the layer-1 span, which is what settling needs (within about
1.3x the width, `recipes/beyond_rank_settle.py --peel`).

Ground-truth diagnosis (scratch scripts, restated as `recipes/short_sentence_screen.py`; CoLA batch
64 index 0): of the 22 sentences of at most 9 tokens, the first beam's seeds (width 256) and what
settling made of them, screened with the best 5 singles and 3 x 3 pairs, gave 4 true sentences and
no false one in 50 CPU s; with a beam 4 times as wide and 2 x 2 pairs, 6 in 190 CPU s. The beam's
seeds for 8 tokens and more stood 3-6 tokens off every true sentence (out of the screen's reach).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Sequence

import torch

from ..core import budget
from ..text.leaks import slot_residuals
from .exact.moves import MOVES, Move

if TYPE_CHECKING:
    from .exact.search import Search

#: per position, the candidates (by layer-1 residual in the sentence's own context) tried one at a time
TOP = 5
#: per position, the candidates tried two positions at a time
PAIRS = 2
#: longest sentence screened (tokens, [CLS] and [SEP] included): the pairs grow with its square
LONGEST = 12
#: sentences sent to the sentence spans at once (one padded forward each)
CHUNK = 256


class NeighbourScreen:
    """Screens sentences and their nearest neighbours on the sentence spans (module doc)."""

    def __init__(self, top: int = TOP, pairs: int = PAIRS, longest: int = LONGEST):
        self.top, self.pairs, self.longest = top, pairs, longest
        self.tried: set[tuple[int, ...]] = set()

    def best_changes(self, search: "Search", seq: Sequence[int]) -> list[list[int]]:
        """Per inner position, its best candidates other than the current one, by layer-1 residual
        with the rest of `seq` as context (best first)."""
        n, dev = len(seq), search.layout.device
        inner = range(1, n - 1) if search.ends else range(n)
        out = []
        for p in inner:
            options = torch.tensor(search.free(p, n), device=dev)
            scores = slot_residuals(search.layout, search.span1, torch.tensor([list(seq[:p])], device=dev), options,
                                    torch.tensor([list(seq[p + 1:])], device=dev))[0]
            ranked = options[torch.argsort(scores)].tolist()
            out.append([t for t in ranked if t != seq[p]][:self.top])
        return out

    def neighbours(self, search: "Search", seq: Sequence[int]) -> list[list[int]]:
        """`seq`, every single change among each position's `top` best candidates and every pair
        among the `pairs` best."""
        first = 1 if search.ends else 0
        changes = self.best_changes(search, seq)
        out = [list(seq)]
        for i, options in enumerate(changes):
            out += [list(seq[:first + i]) + [t] + list(seq[first + i + 1:]) for t in options]
        for (i, a), (j, b) in itertools.combinations(enumerate(changes), 2):
            for t, u in itertools.product(a[:self.pairs], b[:self.pairs]):
                x = list(seq)
                x[first + i], x[first + j] = t, u
                out.append(x)
        return out

    def __call__(self, search: "Search", seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """The sentences among `seqs` (at most `longest` tokens, not screened before) and their
        neighbours that the sentence spans admit, each once."""
        spans = getattr(search, "spans", None)
        fresh = []
        for seq in seqs:
            key = tuple(seq)
            if key not in self.tried and len(seq) <= self.longest:
                self.tried.add(key)
                fresh.append(list(seq))
        if spans is None or not fresh:
            return []
        pool: dict[tuple[int, ...], None] = {}
        for seq in fresh:
            if budget.expired():
                break
            pool.update(dict.fromkeys(tuple(x) for x in self.neighbours(search, seq)))
        trials = [list(x) for x in pool]
        passed: list[list[int]] = []
        for i in range(0, len(trials), CHUNK):
            if budget.expired():
                break
            chunk = trials[i:i + CHUNK]
            passed += [x for x, ok in zip(chunk, spans.certifies(search.layout, chunk)) if ok]
        return passed


@MOVES.register("sentence")
class SentenceMove(Move):
    """Past the rank limit: every single-token change of a miss (among its positions' candidates),
    scored on the last layer's sentence spans (`SentenceSpans.score`), the best one taken. At the
    truth they are exact and one token off they are not (RT batch 16: 1e-8 vs >= 1e-3), so a miss
    one token from a sentence of the batch comes out certified; farther out the score hardly
    tells single changes apart, so this is the move for misses the partial span settled nearly
    right (MiniLM, RT batch 16 index 1, each true sentence with one random token: 15 of 16 back,
    about 11 CPU seconds each; `recipes/beyond_rank_settle.py --spans sentence --k 1`). A miss is
    tried once; without sentence spans (within the limit), or once what is left has a layer-1 span
    with a rank gap (which certifies, and `exact`'s cheaper moves score on it), it is left as it is:
    tried there on every closest miss of a stalled round, it cost RT batch 16 index 0 95 CPU s per
    round and found nothing (recipes/measured/beyond_rank_s10.md)."""

    name = "sentence"

    def __init__(self) -> None:
        self.tried: set[tuple[int, ...]] = set()

    def __call__(self, search: Search, seq: list[int]) -> tuple[list[int], float]:
        current = float(search.residuals([seq])[0])
        spans = getattr(search, "spans", None)
        if spans is None or search.span1.exact or tuple(seq) in self.tried or budget.expired():
            return seq, current
        self.tried.add(tuple(seq))
        inner = range(1, len(seq) - 1) if search.ends else range(len(seq))
        trials = [seq[:p] + [t] + seq[p + 1:] for p in inner for t in search.free(p, len(seq)) if t != seq[p]]
        if not trials:
            return seq, current
        best = trials[int(spans.score(search.layout, trials).argmin())]
        return best, float(search.residuals([best])[0])
