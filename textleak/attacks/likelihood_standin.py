"""Stand-ins for the sentences of a noisy batch that the batch search (`likelihood_batch.stand_in`) has not climbed
yet: the mean gradient, at the sentence's label, of a few training sentences of its declared length.

Why: sentence i's target is T_i = B G - sum_{j != i} g(x_j), so while the other guesses are fillers every error of
theirs lands in T_i, and sentence i's climb fits those errors instead of itself. Ground truth (session 29,
recipes/measured/noise_b4_s29, SST-2 dev batch 0 at variance 1e-6, MiniLM, labels known): sentence 1 ("marvelous
documentary touches -- ever so gracefully --") climbed 60 CPU s by `likelihood`'s `_settle` against T_1 reads
10 of 10 tokens with the other three at their truth, 0 of 10 ("..........") with them at their fillers, 5 of 10 with
them at the mean gradient of 16 training sentences of their lengths; each truth stands 35-70k nats from that mean
against 52-106k from its filler (the head's share, ~80% of each sentence's gradient, moves least: the pooled
vectors of different sentences are nearly parallel).
The training sentences are those the language priors read (`text.prior.prior_files`: the training splits, never
the sentences under attack), tokenised once per process; a length none of them has is cut from longer ones.
"""

from __future__ import annotations

from typing import Any

from ..text.prior import prior_files, training_texts

#: (tokenizer's name and size, files, most) -> {token length: [token ids, ...]} (`by_length`)
_POOLS: dict[tuple, dict[int, list[list[int]]]] = {}


def by_length(tok: Any, most: int = 20000) -> dict[int, list[list[int]]]:
    """The training sentences (the first `most` of each training TSV), tokenised, by token length."""
    files = tuple(prior_files())
    key = (getattr(tok, "name_or_path", ""), type(tok).__name__, len(tok), files, most)  # not id(): ids are reused
    if key not in _POOLS:
        pool: dict[int, list[list[int]]] = {}
        for path in files:
            texts = training_texts(path)[:most]
            for ids in (tok(texts)["input_ids"] if texts else []):
                pool.setdefault(len(ids), []).append(list(ids))
        _POOLS[key] = pool
    return _POOLS[key]


def examples(pool: dict[int, list[list[int]]], n: int, m: int, specials: bool) -> list[list[int]]:
    """`m` training sentences of token length n: those of exactly n first, then longer ones cut to n (with
    `specials`, the first token, the next n - 2 and the last)."""
    out = list(pool.get(n, [])[:m])
    for k in sorted(k for k in pool if k > n):
        if len(out) >= m:
            break
        out += [x[:1] + x[1:n - 1] + x[-1:] if specials else x[:n] for x in pool[k][: m - len(out)]]
    return out


def stand_ins(batch: Any, tok: Any, lengths: list[int], m: int, specials: bool) -> list[dict | None]:
    """Per sentence of `batch` (`likelihood_state._Batch`): the mean of its own gradient (`_Batch._own`, with its
    clipping) over `m` training sentences of its declared length at its label; None where there are none."""
    pool = by_length(tok) if m > 0 else {}
    out: list[dict | None] = []
    for n, y in zip(lengths, batch.labels):
        xs = examples(pool, n, m, specials)
        if not xs:
            out.append(None)
            continue
        mean = None
        for x in xs:
            g = batch._own(x, y)
            mean = {k: v / len(xs) for k, v in g.items()} if mean is None else \
                {k: mean[k] + v / len(xs) for k, v in g.items()}
        out.append(mean)
    return out

