"""Row evidence for the `likelihood` search: per-position token candidates read off the noisy
word- and position-embedding rows of a batch-1 (or small-batch) classification gradient, how far
each position's best candidate stands above the noise, and a first guess built from both.

At batch 1 a token's word-embedding row equals the sum of its positions' rows (one
LayerNorm-input gradient e_p each), so with N the noise (standard deviation sigma per entry)
score(v, p) = <W[v], P[p]> is ~|e_p|^2 for the true token and about N(0, sigma^2 (|W[v]|^2 +
|P[p]|^2 - H sigma^2)) for one not at p. `confidence` is the best score over that standard
deviation: the largest of ~30,000 null scores is ~4.5 (sqrt(2 ln V)), so a position above
`CONFIDENT` (6) holds its token.

Why a seed other than each position's best row (measured, MiniLM, SST-2 dev sentence 0, 44
tokens, variance 1e-6): half of its 36 distinct tokens leave word rows within the noise (squared
norms 0.9-1.3 of the noise's), so 24 of 42 positions' best rows are noise (z 3.8-5.7); that guess
scores J 3.35 against the truth's 5.71 and the matched filter from it ranks the true token in the
top 10 at 11 positions. Keeping the 18 confident positions and filling the rest with one
common token ("." here) scores J 4.67 and ranks 17 in the top 10: a wrong token in every gap
misleads each position's context more than a neutral one. The filler is chosen by J among a few
(`FILLERS`, those the vocabulary holds); the best-row guess competes too, so
the seed is never below it in J.

Shapes: W [V, H] and P [>= L, H] (double, CPU); lengths per sentence; banned [V] bool.
"""

from __future__ import annotations

import math

import torch

#: a position whose best row scores this many noise standard deviations holds a sentence token
CONFIDENT = 6.0
#: filler tokens tried in the gaps of the seed (by their tokenizer strings; absent ones skipped)
FILLERS = (".", ",", "the", "a")


def special_ids(layout, tok) -> torch.Tensor:
    """[V] bool: the special tokens ([CLS], [SEP], padding, mask), never a sentence body's guess."""
    V = layout.word_embeddings.num_embeddings
    banned = torch.zeros(V, dtype=torch.bool, device=layout.device)
    for t in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id):
        if t is not None and t < V:
            banned[t] = True
    return banned


def row_scores(W: torch.Tensor, P: torch.Tensor, L: int, banned: torch.Tensor) -> torch.Tensor:
    """[V, L]: <W[v], P[p]>, banned tokens at -inf."""
    scores = W @ P[:L].T
    scores[banned.cpu()] = -math.inf
    return scores


def null_std(w2: torch.Tensor, p2: torch.Tensor, width: int, sigma: float) -> torch.Tensor:
    """A row score's standard deviation were the token not at the position, sigma sqrt(|W[v]|^2 +
    |P[p]|^2 - H sigma^2), from the rows' squared norms w2 and p2 (a strong row elsewhere in the
    sentence meets this position's noise at |W[v]| sigma, not at sigma |P[p]|)."""
    return sigma * (w2 + p2 - width * sigma ** 2).clamp_min(width * sigma ** 2).sqrt()


def confidence(scores: torch.Tensor, W: torch.Tensor, P: torch.Tensor, sigma: float) -> torch.Tensor:
    """[L]: each position's best row score over its standard deviation were that token not there
    (`null_std`)."""
    L = scores.shape[1]
    best = scores.max(0)
    return best.values / null_std(W[best.indices].pow(2).sum(1), P[:L].pow(2).sum(1), W.shape[1], sigma)


def confident(scores: torch.Tensor, W: torch.Tensor, P: torch.Tensor, sigma: float) -> torch.Tensor:
    """[L] bool: positions whose best row token stands `CONFIDENT` noise deviations above the null
    (`confidence`) and scores highest at this position of all. Why the second test: position
    rows are not independent of each other (neighbouring e_p correlate), so a strong token's row
    also scores high at positions near its own (measured at variance 1e-6, sentences 0-2 of SST-2,
    RT and CoLA: 3 of 66 confident positions held a token of another position, "eccentric" one
    place early, "ballad" two; with the test 0 of 59)."""
    L = scores.shape[1]
    top = scores.argmax(0)
    home = scores[top].argmax(1)  # each position's best token's best position
    return (confidence(scores, W, P, sigma) > CONFIDENT) & (home == torch.arange(L))


def strong_rows(scores: torch.Tensor, W: torch.Tensor, P: torch.Tensor, sigma: float, z: float
                ) -> list[tuple[int, int, float]]:
    """(token, position, z) of every token whose row score at its best position stands `z` noise
    standard deviations above the null (sigma sqrt(|W[v]|^2 + |P[p]|^2 - H sigma^2), as
    `evidence.null_std`), strongest first. scores [V, L] from `evidence.row_scores`."""
    best = scores.max(1)  # per token: its best position
    live = torch.isfinite(best.values)
    null = null_std(W.pow(2).sum(1), P[: scores.shape[1]].pow(2).sum(1)[best.indices], W.shape[1], sigma)
    zs = torch.where(live, best.values / null, torch.full_like(null, -math.inf))
    hits = (zs > z).nonzero().flatten()
    order = hits[torch.argsort(zs[hits], descending=True)].tolist()
    return [(int(v), int(best.indices[v]), float(zs[v])) for v in order]


def candidates(scores: torch.Tensor, lengths: list[int], per_position: int) -> list[list[list[int]]]:
    """Per sentence and position, the tokens whose word-embedding row best matches the
    position's row, best first (sentence b starts at its own rank, so batch seeds differ)."""
    B = max(1, len(lengths))
    k = per_position * B
    top = torch.topk(scores, min(k, scores.shape[0]), dim=0).indices  # [k, L]
    per_position_ids = [top[:, p].tolist() for p in range(scores.shape[1])]
    out = []
    for b, n in enumerate(lengths):
        sent = [per_position_ids[p][b % B::B] + per_position_ids[p] for p in range(n)]
        out.append([list(dict.fromkeys(c))[:k] for c in sent])
    return out


def filler_ids(tok) -> list[int]:
    """Those of `FILLERS` the tokenizer holds as single tokens (the mask token scored lowest of
    all in the measurement above: J -0.63)."""
    vocab = tok.get_vocab()
    return [vocab[s] for s in FILLERS if s in vocab]


def seeds(evidence: list[list[int]], confident: list[bool], fillers: list[int]) -> list[list[int]]:
    """First guesses of one sentence: each position's best row, then for every filler the best
    row at confident positions and the filler elsewhere (the caller keeps the likeliest)."""
    best = [c[0] for c in evidence]
    return [best] + [[b if sure else f for b, sure in zip(best, confident)] for f in fillers]


class PriorCandidates:
    """Candidates from a language prior (`text.prior`'s bigram over training sentences, never the
    attacked ones): at each position the tokens likeliest between the current left and right
    neighbours, and the most frequent tokens.

    Why: the tokens whose rows are buried are mostly frequent function words, whose own gradient
    is small; the flips and the matched filter rank them in the thousands (RT dev sentence 0,
    variance 1e-6: "how" 326-4187, "from" 7451-30449, "such" 364-30139), the bigram with the
    searched guess's neighbours at 32, 146 and 527, the training-set frequency at 125, 42, 160.
    None of these alone ranks them near the top: they widen the pool the likelihood evaluates."""

    def __init__(self, prior, vocab: int, banned: torch.Tensor):
        self.uni = torch.zeros(vocab, dtype=torch.float64)
        for k, c in prior.uni.items():
            if 0 <= k < vocab:
                self.uni[k] = c
        self.succ: dict[int, dict[int, int]] = {}
        self.pred: dict[int, dict[int, int]] = {}
        for (a, b), c in prior.bi.items():
            self.succ.setdefault(a, {})[b] = c
            self.pred.setdefault(b, {})[a] = c
        self.lam, self.banned = prior.lam, banned.cpu()
        order = torch.argsort(self.uni.masked_fill(self.banned, -1), descending=True)
        self.frequent = order.tolist()

    def _log_next(self, v: int) -> torch.Tensor:
        """log p(w | v) for every w."""
        b = torch.zeros_like(self.uni)
        for w, c in self.succ.get(v, {}).items():
            b[w] = c / float(self.uni[v])
        return torch.log(self.lam * b + (1 - self.lam) * (self.uni + 1) / (float(self.uni.sum()) + len(self.uni)))

    def _log_prev(self, w: int) -> torch.Tensor:
        """log p(w | v) for every v."""
        b = torch.zeros_like(self.uni)
        for v, c in self.pred.get(w, {}).items():
            b[v] = c / max(float(self.uni[v]), 1.0)
        return torch.log(self.lam * b + (1 - self.lam) * (float(self.uni[w]) + 1) / (float(self.uni.sum()) + len(self.uni)))

    def between(self, seq: list[int], k: int) -> list[list[int]]:
        """Per position of `seq`, the k tokens likeliest between its neighbours (the ends use one side)."""
        if k < 1:
            return [[] for _ in seq]
        first = torch.zeros_like(self.uni)
        return [torch.topk(self._at(seq, p, True, first), k).indices.tolist() for p in range(len(seq))]

    def between_at(self, seq: list[int], p: int, k: int, right: bool = True) -> list[int]:
        """The k tokens likeliest at position p of `seq` after its left neighbour (and before its
        right one, with `right`); at the first position, weighted by their frequency."""
        return torch.topk(self._at(seq, p, right, torch.log(self.uni + 1)), k).indices.tolist()

    def _at(self, seq: list[int], p: int, right: bool, first: torch.Tensor) -> torch.Tensor:
        """Log-scores of every token at position p of `seq` given its left neighbour (`first` where
        it has none) and, with `right`, its right one; banned tokens -inf."""
        s = self._log_next(seq[p - 1]) if p > 0 else first
        if right and p + 1 < len(seq):
            s = s + self._log_prev(seq[p + 1])
        return s.masked_fill(self.banned, -math.inf)

    def pairs(self, seq: list[int], k: int, inner: range) -> list[list[tuple[int, int]]]:
        """Per position p of `seq` (p, p + 1 both in `inner`), token pairs for p and p + 1: the k
        likeliest successors a of seq[p - 1], each with the two b likeliest between a and seq[p + 2]
        (k * 2 pairs); [] elsewhere. Why: a stretch of function words ("how people from such", RT
        dev sentence 0 at variance 1e-6) settles where each true token alone lowers J (measured:
        "how" -0.040, "from" -0.007, "such" -0.026 from the settled guess): only its neighbours'
        tokens together raise it, and the bigram names the pairs that go together."""
        out: list[list[tuple[int, int]]] = [[] for _ in seq]
        if k < 1:
            return out
        for p in inner:
            if p + 1 not in inner:
                continue
            left = self._log_next(seq[p - 1]) if p > 0 else torch.log(self.uni + 1)
            right = self._log_prev(seq[p + 2]) if p + 2 < len(seq) else 0.0
            for a in torch.topk(left.masked_fill(self.banned, -math.inf), k).indices.tolist():
                s = (self._log_next(a) + right).masked_fill(self.banned, -math.inf)
                out[p] += [(a, b) for b in torch.topk(s, 2).indices.tolist()]
        return out


def zscores(scores: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """[..., V] scores standardised over the allowed tokens (last axis), banned tokens at -inf."""
    s = scores.double()
    allowed = s[..., ~banned.cpu()]
    z = (s - allowed.mean(-1, keepdim=True)) / allowed.std(-1, keepdim=True).clamp_min(1e-300)
    return z.masked_fill(banned.cpu(), -math.inf)


def context_candidates(log_prob: torch.Tensor, matched: torch.Tensor, rows: torch.Tensor | None,
                       banned: torch.Tensor, k: int, row_weight: float = 0.5) -> list[int]:
    """The k best tokens for one slot by log p (a masked LM over the whole guess,
    `text.masked_prior`) + z(matched filter) + `row_weight` z(row score): three weak, independent
    sources, whose sum ranks the buried tokens far better than any alone.

    Measured (ground truth, diagnosis only; scratch scripts, session 16): at the 76 wrong positions
    of seven settled guesses of RT dev sentences 0 and 2 (sessions 14-15's units, variance 1e-6,
    MiniLM, batch 1), the true token's median rank is 244 by the bigram between the guess's
    neighbours (top 8 at 13 of 76), 2,927 by the matched filter, 1,425 by the row score, 142 by the
    cached head (`text.masked_prior` defaults) with the position masked alone (top 8 at 15); by this
    sum 40 (top 8 at 23) with the position masked in the guess, the matched filter from the guess
    (a sweep), and 24 (top 8 at 20) with the wrong stretch blanked to "." and masked, the matched
    filter from the blank (a rebuild). With a head fitted longer (3 epochs, 23,769 sentences) and
    the stretch masked in the guess: 26 (top 8 at 25); without the rows 35 (19); with weight 2 on
    the matched filter and no rows 40 (20)."""
    score = log_prob.double().cpu() + zscores(matched.cpu(), banned)
    if rows is not None and row_weight:
        score = score + row_weight * zscores(rows.cpu(), banned)
    k = min(k, int((~banned.cpu()).sum()))  # a small vocabulary (the tests' models) holds fewer than k
    return torch.topk(score.masked_fill(banned.cpu(), -math.inf), k).indices.tolist()


class ContextCandidates:
    """Per-slot candidates from a masked LM over the whole current guess (`text.masked_prior`)
    combined with the gradient's evidence (`context_candidates`): for a sweep, each position masked
    alone in the guess; for a stretch rebuild, the slot and the rest of the stretch masked in the
    beam's sequence. `rows` [V, >= L] are the row scores (`row_scores`), `k` candidates per slot."""

    def __init__(self, head, rows: torch.Tensor, banned: torch.Tensor, k: int):
        self.head, self.rows, self.banned, self.k = head, rows, banned.cpu(), k

    @classmethod
    def of(cls, target, rows: torch.Tensor, banned: torch.Tensor, k: int) -> tuple["ContextCandidates | None", dict]:
        """The source for `target` (its cached head, `text.masked_prior.context_head`) and what a
        result records of it (the search's details["context"]): None and why where k < 1, the
        tokenizer has no mask token or there are no training sentences to fit a head on."""
        if k < 1:
            return None, {"used": False, "reason": "off (context=0)"}
        from ..text.masked_prior import context_head

        head, why = context_head(target)
        if head is None:
            return None, {"used": False, "reason": f"no context candidates: {why}"}
        return cls(head, rows, banned, k), {"used": True, "candidates": k}

    def with_k(self, k: int) -> "ContextCandidates":
        """The same source giving `k` candidates a slot (the head and the row scores shared)."""
        return self if k == self.k else type(self)(self.head, self.rows, self.banned, k)

    def sweep(self, guess, positions: list[int], word: str, k: int | None = None) -> dict[int, list[int]]:
        """Position -> its k candidates (default the source's `k`), each position masked alone in `guess.x`."""
        logp = self.head.log_probs(guess.x, [[p] for p in positions])
        T = guess.T[word]
        return {p: context_candidates(lp[0], T @ guess.e[p], self.rows[:, p], self.banned, k or self.k)
                for p, lp in zip(positions, logp)}

    def slot(self, guess, seq: list[int], p: int, end: int, e: torch.Tensor, word: str) -> list[int]:
        """Slot p's k candidates in a rebuilt stretch: positions p..end-1 of `seq` masked, the
        matched filter from the beam's own embedding-input gradient `e` [L, H]."""
        lp = self.head.log_probs(seq, [list(range(p, end))])[0][0]
        return context_candidates(lp, guess.T[word] @ e[p], self.rows[:, p], self.banned, self.k)
