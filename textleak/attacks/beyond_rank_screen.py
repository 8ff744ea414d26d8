"""Short sentences past the rank limit, screened on the last layer's sentence spans (#16).

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

Ground-truth diagnosis (scratch, CoLA batch 64 index 0): of the 22 sentences of at most 9
tokens, the first beam's seeds (width 256) and what settling made of them, screened with the
best 5 singles and 3 x 3 pairs, gave 4 true sentences and no false one, in 50 CPU s.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Sequence

import torch

from ..core import budget
from ..text.leaks import slot_residuals

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
