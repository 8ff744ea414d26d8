"""Pieces of the `bags` attack (large classification batches): the columns the embedding
gradients leave, the track assembly over them, the own-gradient score, and the swap search.

Columns: `leaks.token_positions` places most tokens at their positions; what it leaves per
position is a column (the tokens placed there, how many slots are still open, how many [SEP]s
stand there: the declared lengths). A token that stands once in the batch has a word-embedding
gradient row that is exactly its one occurrence's share (1/B of its sentence's gradient at that
input): its `share`.

Track assembly: sentences are built left to right, one column at a time, by an optimal
assignment (Hungarian) of the column's entries to the open sentences, scored by the bigram
prior from the previous token plus the cosine of a token's share with the shares the sentence
holds so far (shares of one sentence are more alike than shares of two: MiniLM, CoLA batch 64,
median pairwise cosine 0.12 against 0.02). Open slots take the loose token the bigram prior
prefers; a [SEP] ends a sentence.

Own-gradient score (`ShareScorer`): a guessed sentence's own gradient at each input, under its
best class, against the shares of its tokens; the mean cosine is 1 for a sentence of the batch
and falls with each wrong token (CoLA batch 64: one token changed 0.91, a wrong second half
0.63 on the right first half). `SwapSearch` exchanges tails, or single tokens, between two
sentences at one position (the columns stay as they are) where the summed score rises.
`SpanScorer` (the best-effort layer-1 residual, ~15x cheaper) and their sum are the other
scores. Measured (scratch, batch 64 index 0, every sentence with a share q of its tokens
swapped within their columns, 80 random pairs: how often the right link outscores the pair
with tails exchanged; share / layer-1 / last-layer sentence spans): CoLA q=0.3 0.73 / 0.77 /
0.73, q=0.6 0.53 / 0.58 / 0.48; SST-2 q=0.3 0.80 / 0.95 / 0.91, q=0.5 0.76 / 0.69 / 0.65; RT
q=0.3 0.89 / 0.83 / 0.83, q=0.5 0.73 / 0.72 / 0.70. So the scores link sentences that are
mostly right, and hardly any from the assembly's start (ROUGE-1 about 0.3); an assignment of a
whole position's tails at once by the layer-1 score (tried) raised the score, not ROUGE-1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..core import budget
from ..text.layouts import Layout
from ..text.leaks.residuals import padded


@dataclass
class Columns:
    """Per position i (0 = [CLS]): placed[i] the content tokens placed there, open[i] the content
    slots no placed token fills, ends[i] the sentences whose [SEP] stands there; loose: tokens
    not placed everywhere they occur (allowed where `allowed[i]` says); shares: token -> the
    unit share of its one occurrence (tokens standing once, placed)."""

    placed: list[list[int]]
    open: list[int]
    ends: list[int]
    loose: list[int]
    allowed: list[set[int]]
    shares: dict[int, torch.Tensor]


def columns(word_grad: torch.Tensor, pins: Any, tokens: Sequence[int], lengths: Sequence[int],
            specials: set[int]) -> Columns:
    """The columns of a batch with declared `lengths` from `leaks.token_positions`' answer."""
    L = max(lengths)
    placed = [[t for t in tokens if t not in specials and i in pins.placed.get(t, ())] for i in range(L)]
    content = [sum(1 for n in lengths if n - 2 >= i) for i in range(L)]
    ends = [sum(1 for n in lengths if n - 1 == i) for i in range(L)]
    open_ = [max(0, content[i] - len(placed[i])) if i > 0 else 0 for i in range(L)]
    loose = [t for t in tokens if t not in pins.complete and t not in specials]
    shares = {}
    for t in pins.complete:
        if t not in specials and len(pins.placed.get(t, ())) == 1:
            row = word_grad[t].double()
            shares[t] = row / row.norm().clamp_min(1e-30)
    return Columns(placed, open_, ends, loose, pins.allowed, shares)


def assemble(cols: Columns, batch_size: int, prior: Any, cls: int, sep: int, weight: float = 3.0
             ) -> list[list[int]]:
    """Sentences built column by column (module doc); every one starts with [CLS] and ends at a
    [SEP] (the longest columns' last sentences are closed with one if the columns run out)."""
    logp = getattr(prior, "logp", None) or (lambda v, w: 0.0)  # prior "none": the shares alone
    tracks = [[cls] for _ in range(batch_size)]
    ended = [False] * batch_size
    held = [None] * batch_size  # sum of the unit shares a sentence holds
    for i in range(1, len(cols.placed)):
        alive = [b for b in range(batch_size) if not ended[b]]
        if not alive:
            break
        entries = [(t, False) for t in cols.placed[i]] + [(None, False)] * cols.open[i] + [(sep, True)] * cols.ends[i]
        cost, fill = _track_costs(cols, i, alive, tracks, held, entries, logp, weight)
        rows, picks = linear_sum_assignment(cost)
        for r, c in zip(rows, picks):
            b, (t, end) = alive[r], entries[c]
            t = fill[r] if t is None else t
            tracks[b].append(t)
            ended[b] = end
            if t in cols.shares:
                held[b] = cols.shares[t] if held[b] is None else held[b] + cols.shares[t]
    for b in range(batch_size):
        if not ended[b]:
            tracks[b].append(sep)
    return tracks


def _track_costs(cols: Columns, i: int, alive: list[int], tracks: list[list[int]], held: list, entries: list,
                 logp: Any, weight: float) -> tuple[np.ndarray, list[int]]:
    """Cost of each open sentence taking each entry of column i; the loose token an open slot
    would take in each sentence."""
    loose = [t for t in cols.loose if t in cols.allowed[i]] or cols.loose or [cols.placed[i][0] if cols.placed[i]
                                                                           else 0]
    cost = np.zeros((len(alive), len(entries)))
    fill = []
    for r, b in enumerate(alive):
        prev = tracks[b][-1]
        options = [(logp(prev, t), t) for t in loose if t != prev] or [(logp(prev, loose[0]), loose[0])]
        best = max(options)
        fill.append(best[1])
        for c, (t, _) in enumerate(entries):
            if t is None:
                cost[r, c] = -best[0]
                continue
            score = logp(prev, t)
            if held[b] is not None and t in cols.shares:
                score += weight * float(cols.shares[t] @ held[b]) / float(held[b].norm().clamp_min(1e-30))
            cost[r, c] = -score
    return cost, fill


class ShareScorer:
    """A sentence's own input gradient against the shares of its tokens (module doc).

    scores(seqs) -> [S]: the mean cosine, at the positions whose token has a share, of the
    sentence's own word-embedding gradient under its best class (0 where no token has one);
    profile(seq) -> {position: cosine} under that class."""

    def __init__(self, layout: Layout, shares: dict[int, torch.Tensor], num_labels: int, chunk: int = 128):
        self.layout, self.shares, self.num_labels, self.chunk = layout, shares, num_labels, chunk
        self.model = layout.model
        self.evaluated = 0

    def _cosines(self, seqs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Per sentence [C, n_i]: cosines at its share positions under each class."""
        out: list[torch.Tensor] = []
        for a in range(0, len(seqs), self.chunk):
            out.extend(self._chunk(seqs[a:a + self.chunk]))
        self.evaluated += len(seqs)
        return out

    def _chunk(self, seqs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        ids, mask = padded(seqs, self.layout.device)
        seen: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            seen["x"] = output.detach().requires_grad_(True)
            return seen["x"]

        handle = self.layout.word_embeddings.register_forward_hook(hook)
        training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                logits = self.model(**self.layout.inputs(ids, mask)).logits
                grads = [torch.autograd.grad(torch.nn.functional.cross_entropy(
                    logits, torch.full((len(seqs),), y, device=logits.device), reduction="sum"), seen["x"],
                    retain_graph=y + 1 < self.num_labels)[0] for y in range(self.num_labels)]
        finally:
            handle.remove()
            self.model.train(training)
        g = torch.stack(grads, 1).double()  # [S, C, L, H]
        out = []
        for s, seq in enumerate(seqs):
            at = [(i, t) for i, t in enumerate(seq) if t in self.shares]
            if not at:
                out.append(torch.zeros(self.num_labels, 0, dtype=torch.double))
                continue
            pos = torch.tensor([i for i, _ in at], device=g.device)
            ref = torch.stack([self.shares[t] for _, t in at]).to(g.device)  # [n, H]
            own = g[s][:, pos]  # [C, n, H]
            out.append(((own * ref).sum(-1) / own.norm(dim=-1).clamp_min(1e-30)).cpu())
        return out

    def scores(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        cos = self._cosines(seqs)
        return torch.tensor([float(c.mean(1).max()) if c.shape[1] else 0.0 for c in cos], dtype=torch.double)


class SwapSearch:
    """Tail and single-token exchanges between two sentences at one position, the summed
    own-gradient score deciding (first improvement, worst sentences first, until a sweep
    changes nothing or the budget runs out). `tries`: exchanges scored per sentence and sweep
    (a seeded sample where there are more)."""

    def __init__(self, scorer: ShareScorer, frozen: set[int] = frozenset(), tries: int = 256, seed: int = 0):
        self.scorer, self.frozen, self.tries = scorer, set(frozen), tries
        self.rng = random.Random(seed)
        self.swaps = 0

    def run(self, tracks: list[list[int]], sweeps: int = 4) -> list[list[int]]:
        tracks = [list(t) for t in tracks]
        score = self.scorer.scores(tracks)
        for _ in range(sweeps):
            changed = False
            for b in torch.argsort(score).tolist():
                if budget.expired():
                    return tracks
                if b in self.frozen:
                    continue
                changed = self._improve(tracks, score, b) or changed
            if not changed:
                break
        return tracks

    def _improve(self, tracks: list[list[int]], score: torch.Tensor, b: int) -> bool:
        moves = self._moves(tracks, b)
        if not moves:
            return False
        got = self._scored(moves)
        moves = moves[:len(got)]
        gain = got.sum(1) - torch.tensor([float(score[b] + score[o]) for o, _, _ in moves])
        k = int(gain.argmax())
        if float(gain[k]) <= 1e-6:
            return False
        o, new_b, new_o = moves[k]
        tracks[b], tracks[o] = new_b, new_o
        score[b], score[o] = got[k, 0], got[k, 1]
        self.swaps += 1
        return True

    def _scored(self, moves: list[tuple[int, list[int], list[int]]], step: int = 32) -> torch.Tensor:
        """Scores [m, 2] of the first m moves, m short of all only where the budget ran out."""
        got = []
        for a in range(0, len(moves), step):
            if a and budget.expired():
                break
            seqs = [s for _, new_b, new_o in moves[a:a + step] for s in (new_b, new_o)]
            got.append(self.scorer.scores(seqs).view(-1, 2))
        return torch.cat(got)

    def _moves(self, tracks: list[list[int]], b: int) -> list[tuple[int, list[int], list[int]]]:
        mine = tracks[b]
        moves = []
        for o, other in enumerate(tracks):
            if o == b or o in self.frozen:
                continue
            for i in range(1, min(len(mine), len(other)) - 1):
                moves.append((o, mine[:i] + other[i:], other[:i] + mine[i:]))  # tails
                if mine[i] != other[i]:
                    moves.append((o, mine[:i] + [other[i]] + mine[i + 1:], other[:i] + [mine[i]] + other[i + 1:]))
        if len(moves) > self.tries:
            moves = self.rng.sample(moves, self.tries)
        return moves


class SpanScorer:
    """Minus the root mean squared layer-1 residual of each whole sentence on the best-effort span
    (`leaks.partial`): a forward through layer 0 only, about a fifteenth of `ShareScorer`'s cost."""

    def __init__(self, layout: Layout, span: Any, chunk: int = 256):
        self.layout, self.span, self.chunk = layout, span, chunk
        self.evaluated = 0

    def scores(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        from ..text.leaks.residuals import sequence_residuals

        out = [sequence_residuals(self.layout, self.span, seqs[a:a + self.chunk]).cpu()
               for a in range(0, len(seqs), self.chunk)]
        self.evaluated += len(seqs)
        n = torch.tensor([float(len(s)) for s in seqs])
        return -(torch.cat(out).double() / n).sqrt()


class SumScorer:
    """The sum of several scorers' scores, each scaled by a weight."""

    def __init__(self, parts: Sequence[tuple[Any, float]]):
        self.parts = list(parts)

    @property
    def evaluated(self) -> int:
        return max(p.evaluated for p, _ in self.parts)

    def scores(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        return sum(w * p.scores(seqs) for p, w in self.parts)

