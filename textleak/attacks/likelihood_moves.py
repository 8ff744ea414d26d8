"""The moves of the `likelihood` search (`attacks.likelihood`), tried once its single-token sweeps
settle, cheapest first; the first that raises the objective is taken (`Moves`):
- swaps and rotations (`_Guess.move`), and long swaps of a token to where its embedding row
  ranks best;
- the prior's token pairs at two neighbouring positions (`_Guess.pairs`: function words that each
  lower J alone);
- an insertion/deletion (`_Guess.indel`: a token deleted, one inserted up to `indel` places away,
  the tokens between shifting by one) that undoes a body sitting shifted (CoLA "i don't want
  trouble." at 1e-6: ". . i don want trouble ." settled with budget left before it; exact with
  it, session 10);
- a stretch rebuilt (`StretchRebuild`): the stretch of the guess the likelihood supports least,
  blanked to a neutral filler and rebuilt jointly;
- on J_w, first of all where `blocks` is set (`Moves.blocks`, 32 by default): every position's
  `blocks` best context candidates scored alone, then at each pair of neighbouring positions the
  `block_pairs` pairs of those whose single changes sum highest.

Why the rebuild: coordinate ascent on J settles where a stretch of several tokens is wrong and no
single true token raises J (RT dev sentence 0 at variance 1e-6, MiniLM, batch 1: "characterizing
how people from such" guessed as "sometimes entry in huge emphasising"; "character" alone costs
0.17 in J). Each wrong token there is held by its wrong neighbours. Blanked, the stretch's
context is neutral (`attacks.evidence`: a filler misleads the matched filter less than wrong
tokens), and a left-to-right beam puts tokens back from each beam's own matched filter (the
gradient at the slot's embedding input, in that beam's context), the slot's best embedding rows,
the bigram prior's likeliest tokens between the beam's left token and the stretch's right
neighbour, the token the guess held, and the tokens nearest a continuous relaxation of the
stretch on the objective (`attacks.relax`, from the guess's tokens: on session 13's settled RT
guess, 60 steps take "character" from 23,948th nearest to 7th; opt-in, `relaxed`: no end-to-end
gain measured, session 14); every hypothesis is scored with
the full likelihood J, and the rebuilt guess is kept only if it beats the settled one. Measured
from session 12's settled guesses (variance 1e-6): on SST-2 dev sentence 0 three rebuilds in six raised J and put
"exercise" in (3-8 CPU s each at 44 tokens); on RT dev sentence 0 the true stretch stays out of
reach: its tokens rank 57th to 29,000th by the matched filter even from a blanked or true
context, 1,000th to 24,000th by first-order gain, and outside the prior's 50 likeliest. In the
600 s runs of session 13 (`recipes/measured/fl_defences_noise1e-6_b1_s13.*`) rebuilds raised J
once on SST-2 sentence 0 (ROUGE-1 0.750; 0.677 without the rebuild after local sweeps, one run
each, run-to-run spread ~0.1) and once each on RT sentences 0 and 2, whose stretches stayed wrong.
Session 17 (ground truth, scratch; `recipes/measured/likelihood_context_s17.md`): with RT sentence
0's true wrong run (3 or 6 tokens) forced as the stretch and the true token added to every slot's
candidates, the beam of 3 still rebuilt none of it: the first slot's true token ranks 5th-9th by J
among ~16 (a filler after it); later slots' true tokens mostly rank first once listed, but along the
true path the slot lists (with `context` 4) held them at 4 of 22 slots of RT sentences 0 and 2.

Which stretch: a position's support is J(guess) - J(guess with a filler there); the window of
2..`width` positions with the least support (summed, over sqrt(width)), not tried before from the
same guess and holding no confident row token (`sure`). One stretch per call.

Shapes: a guess is a list of token ids; T[word] [V, H]; e [L, H] per scored hypothesis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .layer_weights import name_weights
from .likelihood_state import _Guess
from .relax import relaxed_candidates


@dataclass
class StretchRebuild:
    """Rebuilds the least supported stretch of a guess from a filler (above); remembers the
    stretches tried from each guess."""

    #: the widest stretch blanked (2..width positions)
    width: int = 4
    #: partial rebuilds kept per slot
    beam: int = 3
    #: candidates per slot and beam: matched filter, embedding rows, prior between
    matched: int = 4
    rows: int = 3
    prior: int = 4
    #: candidates per slot from a continuous relaxation of the stretch (`attacks.relax`, from the
    #: guess's tokens): the `relaxed` tokens nearest where `relax` Adam steps on the objective
    #: took each slot (0: none, the default; `LikelihoodSearch.relaxed`)
    relaxed: int = 0
    relax: int = 60
    #: per-slot candidates from a masked LM over the beam's sequence (`evidence.ContextCandidates`;
    #: None: none; `LikelihoodSearch.context`)
    context: Any = None
    tried: set = field(default_factory=set)
    #: the last support computed: (scorer, (guess, inner), per position): the insertion/deletion's
    #: weak positions and the rebuild read the same guess's support once
    last: tuple = (None, None, None)

    def support(self, guess, inner: range, filler: list[int]) -> list[float]:
        """Per position, J(guess) - J(guess with a filler there) (the first filler it does not hold)."""
        key = (tuple(guess.x), inner.start, inner.stop)
        if self.last[0] is guess.scorer and self.last[1] == key:  # the scorer held, so never a stale id
            return list(self.last[2])
        out = self._support(guess, inner, filler)
        self.last = (guess.scorer, key, list(out))
        return out

    def _support(self, guess, inner: range, filler: list[int]) -> list[float]:
        trials, where = [], []
        for p in inner:
            f = next((t for t in filler if t != guess.x[p]), None)
            if f is not None:
                t = list(guess.x)
                t[p] = f
                trials.append(t)
                where.append(p)
        out = [math.inf] * len(guess.x)
        if trials:
            J, _ = guess.score(trials)
            for p, j in zip(where, J.tolist()):
                out[p] = guess.best - j
        return out

    def stretch(self, guess, inner: range, support: list[float], sure) -> tuple[int, int] | None:
        """(start, width) of the least supported window not tried from this guess, or None."""
        options = []
        for w in range(2, self.width + 1):
            for a in range(inner.start, inner.stop - w + 1):
                if sure is not None and any(sure[p] == guess.x[p] for p in range(a, a + w)):
                    continue
                key = (tuple(guess.x), a, w)
                if key not in self.tried:
                    options.append((sum(support[a:a + w]) / math.sqrt(w), a, w))
        if not options:
            return None
        _, a, w = min(options)
        self.tried.add((tuple(guess.x), a, w))
        return a, w

    def __call__(self, guess, inner: range, word: str, banned, evidence, prior, filler: list[int], sure=None):
        """The rebuilt guess (sequence, J, e) if it beats `guess.best`, else None."""
        if len(inner) < 2 or not filler:
            return None
        found = self.stretch(guess, inner, self.support(guess, inner, filler), sure)
        if found is None:
            return None
        a, w = found
        blank = list(guess.x)
        blank[a:a + w] = [filler[0]] * w
        J, s = guess.score([blank])
        beams = [(blank, float(J[0]), s.e[0])]
        relaxed = self.relaxation(guess, range(a, a + w), banned)
        for p in range(a, a + w):
            trials = []
            for seq, _, e in beams:
                for t in self._slot(guess, seq, e, p, a + w, word, banned, evidence, prior) + relaxed[p - a]:
                    trials.append(seq[:p] + [t] + seq[p + 1:])
            trials = [list(t) for t in dict.fromkeys(map(tuple, trials))]
            J, s = guess.score(trials)
            keep = torch.topk(J, min(self.beam, len(trials))).indices.tolist()
            beams = [(trials[k], float(J[k]), s.e[k]) for k in keep]
        best = max(beams, key=lambda b: b[1])
        return best if best[1] > guess.best and best[0] != guess.x and guess.admits(best[0]) else None

    def relaxation(self, guess, where: range, banned) -> list[list[int]]:
        """Per slot of `where`, the `relaxed` tokens nearest its relaxed embedding (`attacks.relax`),
        started from the guess's own tokens, on the guess's objective (J or J_w). From the guess
        rather than the blank: on RT dev sentence 0's settled guess (session 13, variance 1e-6) six
        rebuilds raised J twice from the guess, once in eight from the blank."""
        if self.relaxed < 1 or self.relax < 1:
            return [[] for _ in where]
        layout = guess.scorer.layout
        weights = name_weights(layout, guess.weights) if guess.weighted else None
        return relaxed_candidates(layout, guess.T, guess.x, guess.y, list(where), self.relaxed, banned,
                                  self.relax, clip=guess.clip, weights=weights)

    def _slot(self, guess, seq, e, p: int, end: int, word: str, banned, evidence, prior) -> list[int]:
        """Slot p's candidates in one beam: its matched filter, best rows, the prior's likeliest
        between the beam's left token and the stretch's right neighbour, the guess's own token."""
        matched = guess.matched(p, self.matched, banned, word, e)
        rows = evidence[p][: self.rows] if evidence else []
        between = prior.between_at(seq, p, self.prior, right=p + 1 == end) if prior is not None else []
        context = self.context.slot(guess, seq, p, end, e, word) if self.context is not None else []
        return list(dict.fromkeys(matched + rows + between + context + [guess.x[p]]))


class Moves:
    """The moves of one climb of `search` (a `LikelihoodSearch`: its `prior`, `pairs`, `indel`,
    `indel_candidates`, the run's confident rows `_sure`, fillers `_fillers` and stretch rebuild
    `_rebuild`), for one sentence's `evidence` (row candidates per position)."""

    def __init__(self, search, evidence, banned, word: str):
        self.search, self.evidence, self.banned, self.word = search, evidence, banned, word
        self.homes = [c[: search.rows] for c in evidence] if evidence else None  # long swaps to a best-row position
        self.taken = ""  # the last move's kind: swap, pairs, indel or rebuild
        self._z = None  # the run's row scores as per-position z-scores (`far`), once needed

    def __call__(self, guess: _Guess, inner: range):
        """The first of the moves that raises the objective, cheapest first: swaps and rotations,
        the prior's token pairs, an insertion/deletion, a stretch rebuilt; (sequence, J, e) or None."""
        s, sure, prior = self.search, self.search._sure, self.search._prior
        moved = self.blocks(guess, inner) if guess.weighted and getattr(s, "blocks", 0) > 0 else None
        if moved is None:
            self.taken, moved = "swap", guess.move(inner, self.homes)
        if moved is None and prior is not None and s.pairs > 0:
            options = prior.pairs(guess.x, s.pairs, inner)
            if sure is not None:  # a confident row's token stays
                options = [[] if sure[p] == guess.x[p] or (p + 1 < len(options) and sure[p + 1] == guess.x[p + 1])
                           else o for p, o in enumerate(options)]
            self.taken, moved = "pairs", guess.pairs(options)
        if moved is None and s.indel > 0:  # a shifted body: a token deleted, one inserted
            self.taken, moved = "indel", guess.indel(inner, self.shortlist(guess, inner), s.indel, set(s._fillers),
                                                     self.weak(guess, inner), self.far(guess, inner))
        if moved is None and s.rebuild > 1:
            moved = self.rebuild(guess, inner)
        return moved

    def blocks(self, guess: _Guess, inner: range):
        """Deep single tokens and two-token blocks on J_w: each position's `blocks` best context candidates
        (`evidence.ContextCandidates`, the position masked alone; a confident row's token left be) scored
        alone, then at each pair of neighbouring positions the `block_pairs` pairs of those candidates whose
        single changes of J_w sum highest; (sequence, J_w, e) of the best single or pair if it raises J_w,
        else None. Why (ground truth, session 23-24, recipes/measured/noise_rt_b1_s24/diag): from 11
        settled RT dev guesses at 1e-6 greedy true blocks of <= 2 tokens reach the truth on J_w, true
        singles from 5; and the true pairs the oracle takes that both sit in the context top 64 rank
        0th-6th of the 64 x 64 by the sum of their single changes in 3 of 5."""
        s, self.taken = self.search, "blocks"
        sure, context = s._sure, s._context
        if context is None:
            return None
        where = [p for p in inner if sure is None or sure[p] != guess.x[p]]
        lists = context.sweep(guess, where, self.word, s.blocks)
        x, trials, at = guess.x, [], []
        for p in where:
            for v in lists[p]:
                if v != x[p]:
                    trials.append(x[:p] + [v] + x[p + 1:])
                    at.append((p, v))
        single, J = guess.best_of(trials, scores=True)
        if J is None:  # the budget ran out before a chunk was scored
            return single
        gain: dict[int, list[tuple[float, int]]] = {}
        for (p, v), j in zip(at, J):
            gain.setdefault(p, []).append((j - guess.best, v))
        pairs = []
        for p in where:
            if p + 1 in gain and p in gain:
                sums = sorted(((ga + gb, a, b) for ga, a in gain[p] for gb, b in gain[p + 1]), reverse=True)
                pairs += [x[:p] + [a, b] + x[p + 2:] for _, a, b in sums[: s.block_pairs]]
        pair = guess.best_of(pairs) if pairs else None
        if pair is not None and (single is None or pair[1] > single[1]):
            return pair
        return single

    def rebuild(self, guess: _Guess, inner: range):
        """The search's stretch rebuild (`StretchRebuild`) of one stretch: (sequence, J, e) or None."""
        s, self.taken = self.search, "rebuild"
        return s._rebuild(guess, inner, self.word, self.banned, self.evidence, s._prior, s._fillers, s._sure)

    def weak(self, guess: _Guess, inner: range) -> set[int] | None:
        """Past 16 tokens (where the insertion/deletion deletes only fillers and repeated tokens), the
        `indel_weak` least supported positions (`StretchRebuild.support`: the likelihood lost when a
        filler takes a position's place; shared with the rebuild, which reads the same guess's), a
        confident row's token left be; None where that is off or the guess is short. Why: on RT dev
        sentence 2 at variance 1e-6 (38 tokens; ground truth, scratch, session 20) the one deletions
        that raised J from settled guesses stood at non-repeated tokens ranking 1st-5th least supported."""
        s = self.search
        k = getattr(s, "indel_weak", 0)
        if k < 1 or len(inner) <= 16 or not s._fillers:
            return None
        support = s._rebuild.support(guess, inner, s._fillers)
        sure = s._sure
        order = sorted((p for p in inner if sure is None or sure[p] != guess.x[p]), key=lambda p: support[p])
        return set(order[:k])

    def far(self, guess: _Guess, inner: range) -> dict[int, list[int]] | None:
        """Past 16 tokens at batch 1, per position a, the `indel_far` positions 4 to `indel` places
        away whose embedding rows fit a's token better than a's row does (per-position z-scores of
        the run's row scores, `evidence.row_scores`): where the insertion/deletion moves it (one trial
        each); None where off. Why: RT dev sentence 2 (38 tokens, variance 1e-6, session 20) settled
        with "##ties" 4 places late ("anxie - fully maintaining the ##ties"); moved back J rises 0.009,
        and its row there scores 3.2 noise deviations against -0.9 where it stood (ground truth, scratch)."""
        s, rows = self.search, getattr(self.search, "_rows", None)
        k, reach = getattr(s, "indel_far", 0), s.indel
        if k < 1 or rows is None or len(inner) <= 16:
            return None
        if self._z is None:
            finite = torch.isfinite(rows[:, 0])
            self._z = (rows - rows[finite].mean(0)) / rows[finite].std(0)
        out = {}
        for a in inner:
            z = self._z[guess.x[a]]
            options = [b for b in inner if 4 <= abs(a - b) <= reach and float(z[b]) > float(z[a])]
            out[a] = sorted(options, key=lambda b: -float(z[b]))[:k]
        return out

    def shortlist(self, guess: _Guess, inner: range) -> list[list[int]]:
        """Per position, the tokens an insertion there tries: the `indel_candidates` best of the
        matched filter and (with a prior) the two likeliest between the neighbours."""
        k, out, prior = self.search.indel_candidates, [[] for _ in guess.x], self.search._prior
        between = prior.between(guess.x, 2) if prior is not None else out
        for p in inner:
            out[p] = guess.matched(p, k, self.banned, self.word) + between[p]
        return out
