"""The state of the `likelihood` search (`attacks.likelihood`): the batch of current guesses with
each sentence's own gradient and target (`_Batch`), one sentence's guess against its target with
its single-token and reordering moves (`_Guess`), and the likelihood term J of scored hypotheses.

Shapes: sentences are token-id lists; gradients and targets name -> tensor (the model's shapes).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..core.budget import current
from ..text.layouts import Layout, layout_for
from .layer_weights import GroupScorer, relative_weights


def _gradient(layout: Layout, seq: Sequence[int], label: int, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(layout.model.named_parameters())
    ids = torch.tensor([list(seq)], device=layout.device)
    grads = layout.loss_gradient(ids, torch.tensor([int(label)], device=layout.device), [params[n] for n in names])
    return {n: g.detach() for n, g in zip(names, grads)}


def _J(scores, clip: float | None, norm2: torch.Tensor | None = None) -> torch.Tensor:
    """2 <T, c g> - ||c g||^2 per hypothesis, c = Opacus' clip factor for max_grad_norm `clip` (1 without),
    read off `norm2` (||g||^2, when the scores are weighted per layer) or the scores' own."""
    return _J_parts(scores.dot, scores.norm2, clip, norm2)


def _J_parts(dot: torch.Tensor, norm2w: torch.Tensor, clip: float | None, norm2: torch.Tensor | None = None
             ) -> torch.Tensor:
    """`_J` from the (weighted) dot products and squared norms per hypothesis."""
    if clip is None:
        return 2 * dot - norm2w
    c = torch.clamp(clip / ((norm2w if norm2 is None else norm2).sqrt() + 1e-6), max=1.0)
    return 2 * c * dot - c * c * norm2w


def clip_norm(metadata) -> float | None:
    """The per-example clipping norm of a DP-SGD capture (a public training setting), else None."""
    defence = (metadata.get("capture", {}) or {}).get("defence") or {}
    if defence.get("name") in ("dpsgd", "dpeps"):
        return float(defence["params"]["max_grad_norm"])
    return None


class _Batch:
    """The current guess of every sentence, each one's own gradient, and the targets T_i."""

    def __init__(self, layout: Layout, gradients, seqs: list[list[int]], labels: list[int], clip: float | None = None):
        self.layout, self.model, self.shared, self.clip = layout, layout.model, gradients, clip
        self.names = [n for n in gradients if n in dict(self.model.named_parameters())]
        self.seqs, self.labels = [list(s) for s in seqs], list(labels)
        self.own = [self._own(s, y) for s, y in zip(self.seqs, self.labels)]
        #: per sentence {position: token} its guesses keep (`likelihood_batch.pin`; None: none)
        self.pins: list[dict[int, int]] | None = None
        #: each hypothesis scored at its likelier label, the guess taking it (`likelihood_batch.relabel`)
        self.free = False
        #: per sentence, a gradient that stands for it in the others' targets (None: its guess's own;
        #: `likelihood_batch.stand_in`); the misfit is always the guesses'
        self.stand: list[dict[str, torch.Tensor] | None] | None = None

    def _own(self, seq, label) -> dict[str, torch.Tensor]:
        g = _gradient(self.layout, seq, label, self.names)
        if self.clip is not None:  # DP-SGD's per-example clipping (Opacus' factor)
            norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in g.values()))
            factor = min(1.0, self.clip / (norm + 1e-6))
            g = {n: v * factor for n, v in g.items()}
        return g

    def target(self, i: int) -> dict[str, torch.Tensor]:
        B = len(self.seqs)
        T = {n: B * self.shared[n].float().to(self.layout.device) for n in self.names}
        for j, g in enumerate(self.own):
            g = self.stand[j] if self.stand is not None and self.stand[j] is not None else g
            if j != i:
                for n in self.names:
                    T[n] -= g[n]
        return T

    def set(self, i: int, seq: list[int], label: int) -> None:
        self.seqs[i], self.labels[i] = list(seq), int(label)
        self.own[i] = self._own(seq, label)

    def misfit(self, own: list[dict[str, torch.Tensor]] | None = None) -> float:
        """||G - mean_i g_i||^2 (g_i: `own`, default the guesses' own gradients)."""
        own, B = self.own if own is None else own, len(self.seqs)
        return sum(float((self.shared[n].double().to(self.layout.device) - sum(g[n].double() for g in own) / B).pow(2).sum())
                   for n in self.names)

    def assign(self, labels: list[int]) -> bool:
        """The labels (the multiset `labels`, e.g. the counts read off the bias) put on the sentences where the
        batch likelihood prefers them (every distinct placement, `placements`), the guesses as they stand;
        whether any moved. Why: labels read as counts are assigned in order, so on SST-2 dev batch 0
        ([0, 1, 0, 0], read [0, 0, 0, 1]) two sentences were climbed at the wrong label, whose every gradient
        has the other sign."""
        options = placements(labels)
        if len(options) < 2:
            return False
        own = {}
        for i, seq in enumerate(self.seqs):
            for y in sorted(set(labels)):
                own[i, y] = self.own[i] if y == self.labels[i] else self._own(seq, y)
        best = min(options, key=lambda ys: self.misfit([own[i, y] for i, y in enumerate(ys)]))
        moved = best != self.labels
        self.labels, self.own = list(best), [own[i, y] for i, y in enumerate(best)]
        return moved


def placements(labels: Sequence[int], most: int = 256) -> list[list[int]]:
    """Every distinct order of the multiset `labels` (the counts read off the bias put on the sentences), in
    lexicographic order; [the labels as given] where there are more than `most` (nothing is tried)."""
    counts = {y: list(labels).count(y) for y in sorted(set(labels))}
    total = math.factorial(len(labels)) // math.prod(math.factorial(k) for k in counts.values())
    if total > most:
        return [list(labels)]
    order, out = sorted(int(y) for y in labels), []
    while True:  # the next distinct permutation in lexicographic order, till the last
        out.append(list(order))
        k = next((k for k in range(len(order) - 2, -1, -1) if order[k] < order[k + 1]), None)
        if k is None:
            return out
        m = max(m for m in range(k + 1, len(order)) if order[m] > order[k])
        order[k], order[m] = order[m], order[k]
        order[k + 1:] = reversed(order[k + 1:])


def carried(seqs: Sequence[Sequence[int]], now: Sequence[int], ys: Sequence[int], lengths: Sequence[int],
            pad: int, specials: bool) -> list[list[int]]:
    """The guesses `seqs` (labels `now`) under the labels `ys` with each guess carried with its label: a slot
    losing label y hands its guess to a slot gaining y (in order), cut or padded with `pad` to that slot's
    declared length (the [CLS]/[SEP] ends kept where `specials`). Why: a wrong label flips the sign of a
    sentence's whole gradient, so the content climbs into the slot of its label (session 27: SST-2 dev batch 0's
    one label-1 sentence, 10 tokens, assembled in the label-1 slot of 16); moving a label without its content
    asks the content to be found again."""
    out = [list(s) for s in seqs]
    for y in sorted(set(ys)):
        losing = [i for i in range(len(ys)) if now[i] == y and ys[i] != y]
        gaining = [i for i in range(len(ys)) if ys[i] == y and now[i] != y]
        for a, g in zip(losing, gaining):
            src, n = seqs[a], lengths[g]
            if specials:
                body = list(src[1:-1])[: n - 2]
                out[g] = [src[0]] + body + [pad] * (n - 2 - len(body)) + [src[-1]]
            else:
                out[g] = (list(src) + [pad] * n)[:n]
    return out


class _Guess:
    """One sentence's current guess x (label y) against its target T_i: J of the guess (`best`) and
    the gradient at its embedding sum (`e`, for the matched filter). `weighted`: J is J_w, each
    layer's share relative to its size at the guess (`attacks.layer_weights`); `keep`: only the
    embeddings and the first `keep` encoder layers count (the later layers and the head weigh 0)."""

    def __init__(self, batch: _Batch, i: int, weighted: bool = False, guard: bool = False, keep: int | None = None):
        self.T, self.clip, self.weighted = batch.target(i), batch.clip, weighted
        self.x, self.y = list(batch.seqs[i]), batch.labels[i]
        self.scorer = GroupScorer(batch.layout, self.T)
        if weighted:
            self.scorer.weights = relative_weights(self.scorer, self.x, self.y)
        if keep is not None:  # only the embeddings and the first `keep` layers count (`likelihood_batch.early`)
            self.scorer.weights[min(keep + 1, self.scorer.count - 1):] = 0
        self.weights = self.scorer.weights
        #: J_w's weights at this guess where J's changes must not lower J_w (`LikelihoodSearch.guard`)
        self.guard = relative_weights(self.scorer, self.x, self.y) if guard and not weighted else None
        self._floor: tuple = (None, -math.inf)  # (sequence, its J_w) under the guard
        #: {position: token} every hypothesis must keep (scored -inf otherwise): the batch's pins this guess holds
        pins = getattr(batch, "pins", None)
        self.pins = {p: v for p, v in pins[i].items() if self.x[p] == v} if pins else None
        #: every hypothesis scored at its likelier label (`_Batch.free`); `_flipped`: the last scored ones' (flip, r)
        self.free, self._flipped = bool(getattr(batch, "free", False)), None
        J, scores = self.score([self.x])
        self.best, self.e = float(J[0]), scores.e[0]
        self._take(0)

    def _guard_jw(self) -> torch.Tensor:
        """J_w (the guard's weights) of the hypotheses the scorer just scored, from its per-group parts."""
        dot, norm2 = self.scorer.parts
        w = self.guard[:, None]
        return _J_parts((w * dot).sum(0), (w * norm2).sum(0), self.clip, norm2.sum(0))

    def floor(self) -> float:
        """J_w (the guard's weights) of the current guess: a change the guard admits does not lower it."""
        if self._floor[0] != tuple(self.x):
            self.score([self.x])
            self._floor = (tuple(self.x), float(self._guard_jw()[0]))
        return self._floor[1]

    def guarded(self, J: torch.Tensor, floor: float) -> torch.Tensor:
        """J with the hypotheses just scored that lower J_w below `floor` at -inf (no guard: J)."""
        return J if self.guard is None else J.masked_fill(self._guard_jw() < floor, -math.inf)

    def admits(self, seq: list[int]) -> bool:
        """Whether the guard lets the guess become `seq` (J_w not lower; always without a guard)."""
        if self.guard is None:
            return True
        floor = self.floor()
        self.score([seq])
        return float(self._guard_jw()[0]) >= floor

    def matched(self, p: int, k: int, banned: torch.Tensor, word: str, e: torch.Tensor | None = None) -> list[int]:
        """The matched filter at position p: the k tokens whose target word row best matches the
        gradient at p's embedding input (`e` [L, H]: another hypothesis's; default the guess's)."""
        e = self.e if e is None else e
        return torch.topk((self.T[word] @ e[p]).masked_fill(banned, -math.inf), k).indices.tolist()

    def score(self, trials: list[list[int]]):
        """(J or J_w [W], the scores) of W hypotheses with the guess's label."""
        s = self.scorer(torch.tensor(trials), torch.full((len(trials),), self.y))
        J = _J(s, self.clip, self.scorer.parts[1].sum(0))
        self._flipped = None
        if self.free and s.probs is not None and s.probs.shape[1] == 2:
            other, r = self._other(s)
            self._flipped = (other > J, r)
            J = torch.maximum(J, other)
        if self.pins:
            off = torch.tensor([any(t[p] != v for p, v in self.pins.items()) for t in trials], device=J.device)
            J = J.masked_fill(off, -math.inf)
        return J, s

    def _other(self, s) -> tuple[torch.Tensor, torch.Tensor]:
        """(J at the other label, r) of hypotheses just scored: a binary softmax classifier's every gradient
        is (p_0 - [y = 0]) times one the label leaves alone, so the other label's is r = a(1 - y) / a(y) times
        the scored one (dot products times r, squared norms times r^2)."""
        p0 = s.probs[:, 0].to(s.dot)
        a = p0 - (1.0 if self.y == 0 else 0.0)
        r = (p0 - (0.0 if self.y == 0 else 1.0)) / torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
        return _J_parts(r * s.dot, r * r * s.norm2, self.clip, r * r * self.scorer.parts[1].sum(0)), r

    def _take(self, k: int) -> None:
        """After hypothesis k of the last scored became the guess: its likelier label taken (free labels)."""
        if self._flipped is not None and bool(self._flipped[0][k]):
            self.y, self.e = 1 - self.y, self.e * float(self._flipped[1][k])

    def relabel(self) -> None:
        """With free labels, the guess at its likelier label (after a move set x, best and e at this one)."""
        if self.free:
            J, s = self.score([self.x])
            self.e = s.e[0]
            self._take(0)

    def substitute(self, p: int, options: list[int]) -> int:
        """Puts the best of `options` at position p if it raises J; 1 if it did, else 0."""
        options = [t for t in dict.fromkeys(options) if t != self.x[p]]
        if not options:
            return 0
        trials = [list(self.x) for _ in options]
        for t, v in zip(trials, options):
            t[p] = v
        floor = self.floor() if self.guard is not None else None
        J, s = self.score(trials)
        J = self.guarded(J, floor)
        k = int(J.argmax())
        if float(J[k]) <= self.best:
            return 0
        self.best, self.x[p], self.e = float(J[k]), options[k], s.e[k]
        self._take(k)
        return 1

    def move(self, inner: range, homes: list[list[int]] | None = None, short: int = 40):
        """The best of: two tokens swapped (any two; up to 8 apart past 40 tokens), or a window of
        3-4 tokens rotated by one (a token moved a few places), or two tokens swapped at any
        distance where one goes to a position `homes` names for it (its best rows there: SST-2 dev
        sentence 0 at 1e-6 settled with "inspiration" 30 places from its best-row position);
        (sequence, J, e) if it beats `best`, else None. A
        settled guess often holds the right tokens in a wrong order (SST-2, variance 1e-9:
        "marvelous documentary - touches - ever so - gracefully -")."""
        x, trials = self.x, []
        reach = len(x) if len(x) <= short else 8  # swaps at any distance in sentences up to `short` tokens
        for a in inner:
            for d in range(1, reach):
                if a + d in inner and x[a] != x[a + d]:
                    t = list(x)
                    t[a], t[a + d] = t[a + d], t[a]
                    trials.append(t)
            for w in (3, 4):
                if a + w - 1 in inner:
                    window = x[a:a + w]
                    for rot in (window[1:] + window[:1], window[-1:] + window[:-1]):
                        if rot != window:
                            trials.append(x[:a] + rot + x[a + w:])
        for a in inner if homes is not None else ():
            for b in inner:
                if b > a + reach - 1 and x[a] != x[b] and (x[a] in homes[b] or x[b] in homes[a]):
                    t = list(x)
                    t[a], t[b] = t[b], t[a]
                    trials.append(t)
        return self.best_of(trials)

    def best_of(self, trials: list[list[int]], chunk: int = 64, scores: bool = False):
        """(sequence, J, e) of the best of `trials` (duplicates scored once) if it beats `best`, else None;
        past the time budget (`core.budget`) the best of the chunks scored so far (a move of ~1,000
        trials at 44 tokens took 60 s on a loaded machine: RT dev sentence 2 ran 71 s past its 600).
        With `scores`, (that, J of every trial in order) where every chunk was scored, else (that, None)."""
        unique = [list(t) for t in dict.fromkeys(map(tuple, trials))]
        best_move, out = None, []
        floor = self.floor() if self.guard is not None else None
        for k in range(0, len(unique), chunk):
            if k and current().expired():
                break
            J, s = self.score(unique[k:k + chunk])
            J = self.guarded(J, floor)
            out += J.tolist()
            j = int(J.argmax())
            if float(J[j]) > self.best and (best_move is None or float(J[j]) > best_move[1]):
                best_move = (unique[k + j], float(J[j]), s.e[j])
        if not scores:
            return best_move
        if len(out) < len(unique):
            return best_move, None
        of = dict(zip(map(tuple, unique), out))
        return best_move, [of[tuple(t)] for t in trials]

    def pairs(self, options: list[list[tuple[int, int]]]):
        """The best two-token change: positions p and p + 1 set to a pair of `options[p]` (from
        `attacks.evidence.PriorCandidates.pairs`); (sequence, J, e) if it beats `best`, else None.
        Tokens that go together (function words) are tried together, where each alone lowers J."""
        trials = []
        for p, pairs in enumerate(options):
            for a, b in pairs:
                if (a, b) != (self.x[p], self.x[p + 1]):
                    trials.append(self.x[:p] + [a, b] + self.x[p + 2:])
        return self.best_of(trials)

    def indel(self, inner: range, shortlist: list[list[int]], reach: int = 8, deletable: set[int] | None = None,
              weak: set[int] | None = None, far: dict[int, list[int]] | None = None):
        """The best insertion/deletion: the token at position a deleted and a token put at b (|a-b| <=
        `reach`; the tokens between shift by one), the token at b the deleted one (a long-range move)
        or one of `shortlist[b]` (that slot's candidates); (sequence, J, e) if it beats `best`, else
        None. Deletions only at tokens in `deletable` or repeated in the guess past 16 positions (a
        shifted body leaves fillers and duplicates behind), and at the positions `weak` names (the
        least supported, `Moves.weak`); any other token at a moves to the positions `far[a]` names
        (deleted and put back; `Moves.far`: 4 or more places, which swaps and rotations do not reach). Why: a guess whose
        body sits shifted settles where no swap, rotation or single token raises J (CoLA "i don't want
        trouble." at variance 1e-6: ". . i don want trouble ." settled after 70 s of a 600 s budget);
        RT dev sentence 2 (38 tokens, session 20) held "##ties" 4 places late: moved back, J +0.009."""
        x, trials = self.x, []
        counts = {t: x.count(t) for t in x}
        for a in inner:
            full = len(inner) <= 16 or counts[x[a]] > 1 or (deletable is not None and x[a] in deletable) \
                or (weak is not None and a in weak)
            if not full and not (far and far.get(a)):
                continue
            rest = x[:a] + x[a + 1:]
            for b in range(max(inner.start, a - reach), min(inner.stop, a + reach + 1)) if full else far[a]:
                if b == a:
                    continue
                for c in dict.fromkeys([x[a]] + (list(shortlist[b]) if full else [])):
                    t = rest[:b] + [c] + rest[b:]
                    if t != x:
                        trials.append(t)
        return self.best_of(trials)


def misfit(observation, target, token_ids: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
    """||G - mean_i g(x_i, y_i)||^2 of a guessed batch: minus twice its Gaussian log-likelihood
    times sigma^2, up to a constant; lower is likelier."""
    return _Batch(layout_for(target.model), observation.gradients, [list(s) for s in token_ids],
                  [int(y) for y in labels], clip_norm(observation.metadata)).misfit()

