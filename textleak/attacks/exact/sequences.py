"""Pure helpers on token-id sentences: variants a move scores, and tests a search uses to tell a
sentence from a copy of one already found."""

from __future__ import annotations

from typing import Sequence


def occupants(lengths: Sequence[int]) -> list[int]:
    """How many sentences reach each position."""
    return [sum(n > i for n in lengths) for i in range(max(lengths))]


def cuts(seq: list[int], lengths: Sequence[int], ends: bool, sep_id) -> list[list[int]]:
    """`seq` cut to each of `lengths` below its own (closed by [SEP] where sentences have ends)."""
    return [seq[:m - 1] + [sep_id] if ends else seq[:m] for m in sorted(set(lengths)) if m < len(seq)]


def shifted(seq: Sequence[int], ends: bool) -> list[list[int]]:
    """`seq` with 1-3 tokens inserted (copies of the token there, for settling to replace) or
    deleted at one position, kept at its length by trimming or padding the far end."""
    head, body, tail = ([seq[0]], list(seq[1:-1]), [seq[-1]]) if ends else ([], list(seq), [])
    n, out = len(body), []
    for a in range(n):
        for k in (1, 2, 3):
            grown = body[:a] + [body[a]] * k + body[a:]
            shrunk = body[:a] + body[a + k:]
            out += [grown[:n], grown[k:], (shrunk + body[-1:] * k)[:n], (body[:1] * k + shrunk)[-n:]]
    variants = []
    for b in out:
        v = head + b + tail
        if len(b) == n and v != list(seq) and v not in variants:
            variants.append(v)
    return variants


def resembles(prefix: Sequence[int], stem: Sequence[int], *, shortest: int = 6, share: float = 0.8) -> bool:
    """Whether `prefix` holds, in order, at least `share` of its tokens from `stem`."""
    if len(prefix) < shortest:
        return False
    row = [0] * (len(stem) + 1)
    for a in prefix:  # longest common subsequence, one row at a time
        prev_diag = 0
        for j, b in enumerate(stem, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if a == b else max(row[j], row[j - 1])
    return row[-1] >= share * len(prefix)


def follows(prefix: Sequence[int], stem: Sequence[int], *, shortest: int = 4) -> bool:
    """Whether `prefix` (of at least `shortest` tokens) retraces `stem` on all but one of their
    common tokens: a found sentence's own prefixes, or the sentence grown past its end."""
    common = min(len(prefix), len(stem))
    return len(prefix) >= shortest and sum(a != b for a, b in zip(prefix[:common], stem)) <= 1


def slots_by_masks(sequences: list[list[int]], positions: list[set[int]], mask_id: int,
                   fixed: dict[int, int] | None = None) -> list[int]:
    """For each slot, the index of the sentence (of the slot's length) whose [MASK] positions
    best agree with the slot's declared ones; `fixed` slots (slot -> sentence) are kept."""
    fixed = fixed or {}
    free_ = [i for i in range(len(sequences)) if i not in fixed.values()]
    order = []
    for b, want in enumerate(positions):
        if b in fixed:
            order.append(fixed[b])
            continue
        same = [i for i in free_ if len(sequences[i]) == len(sequences[b])] or free_
        have = {i: {p for p, t in enumerate(sequences[i]) if t == mask_id} for i in same}
        i = max(same, key=lambda i: (len(have[i] & want) - len(have[i] ^ want), -abs(i - b)))
        order.append(i)
        free_.remove(i)
    return order
