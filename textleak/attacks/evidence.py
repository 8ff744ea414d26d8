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


def confidence(scores: torch.Tensor, W: torch.Tensor, P: torch.Tensor, sigma: float) -> torch.Tensor:
    """[L]: each position's best row score over its standard deviation were that token not there,
    sigma sqrt(|W[v]|^2 + |P[p]|^2 - H sigma^2) (a strong row elsewhere in the sentence meets
    this position's noise at |W[v]| sigma, not at sigma |P[p]|)."""
    L, H = scores.shape[1], W.shape[1]
    best = scores.max(0)
    w2 = W[best.indices].pow(2).sum(1)
    p2 = P[:L].pow(2).sum(1)
    return best.values / (sigma * (w2 + p2 - H * sigma ** 2).clamp_min(H * sigma ** 2).sqrt())


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
