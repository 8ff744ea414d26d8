"""The [CLS] start's scores kept per sentence (`exact-update`'s option `cls_memo`; on since session 46; #15,
`recipes/measured/fedavg_rt8_s46`, `fedavg_owed_s46/memo_sst0_800`).

The [CLS] start (`update_cls.cls_start`: its screened descents and their going on; `update_cls_lengths.length_start`)
asks `ClsSpans.score` (float32) and, with option `cls_rough`, `RoughScreen.top` (bfloat16) for the same sentences
again and again: a sweep tries every position's options in every sentence and every pair's trades, and where a
sentence did not change since the last sweep its trials are the last sweep's; `RoughScreen.top` also scores the
current sentences again in every call. RT dev 0 of 8, FedAvg K 8, lr 1e-4, 400 CPU s (`repeats.py.txt`): 25% of
the float32 and 30% of the bfloat16 sentences asked were asked before of the same spans (29% / 31.5% over both
starts), ~90 of the start's 311 CPU s of forwards. A sentence's score depends only on the sentence (the spans' layout
and bases are fixed for the run), so here each scorer keeps what it computed (`ScoreMemo`: sentence -> score) and
forwards only the sentences it has not seen. Float32: a sentence scores the same alone or in any chunk to ~1e-16,
padded to a longer one's length to float32 rounding (`microbench.py.txt agree`), as the chunks differed between
calls before. Bfloat16: a chunk's size or padding moves a score by up to ~3e-5, as it did between calls before; the
memo keeps the first value, so only which K trials the screen hands to float32 may differ where two trials' bfloat16
gains lie that close. One `ScoreMemos` serves the [CLS] start and the length start (the same spans:
`RoundingFits.row_basis` fits each site once a run). Side by side (`cls_rough=4` in both): RT b8 lr 1e-4 dev 0, 400
CPU s, the start 383.6 -> 286.0 CPU s, the same kept start, 0.526 / 0.276 in both (the repair 0.5 -> 95.3 CPU s, no
change kept); RT dev 1 227.9 -> 198.1, 0.791 / 0.513 in both; SST-2 b4 lr 1e-5 dev 1, 800 CPU s, 65.4 -> 52.8,
the same decisions, certified in both.
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Sequence

#: sentences kept per scorer at most (~160 bytes each as packed ids; emptied when full): RT batch 8's start asks for
#: ~150,000 at bfloat16 in 400 CPU s
LIMIT = 400_000


class ScoreMemo:
    """One scorer's scores by sentence: `scored(fn, seqs)` is `fn(seqs)` with only the sentences not seen before
    forwarded (each once). `hits`: sentences answered from the memo; `fresh`: sentences forwarded."""

    def __init__(self, limit: int = LIMIT):
        self.limit, self.hits, self.fresh = limit, 0, 0
        self.seen: dict[bytes, float] = {}

    def scored(self, fn: Callable[[list[list[int]]], Sequence[float]], seqs: Sequence[Sequence[int]]) -> list[float]:
        keys = [array("q", s).tobytes() for s in seqs]
        new = {k: list(s) for k, s in zip(keys, seqs) if k not in self.seen}
        if len(self.seen) + len(new) > self.limit:
            self.seen.clear()
            new = {k: list(s) for k, s in zip(keys, seqs)}
        if new:
            self.seen.update(zip(new, fn(list(new.values()))))
        self.fresh += len(new)
        self.hits += len(keys) - len(new)
        return [self.seen[k] for k in keys]


class ScoreMemos:
    """Option `cls_memo`: a float32 and a bfloat16 `ScoreMemo`, shared by the [CLS] start's spans (`attach`)."""

    def __init__(self, limit: int = LIMIT):
        self.float32, self.bfloat16 = ScoreMemo(limit), ScoreMemo(limit)

    def attach(self, spans: Any) -> Any:
        """`spans` (an `update_cls.ClsSpans`, or None) with the memos set on it and on its `rough` screen."""
        if spans is not None:
            spans.memo = self.float32
            if spans.rough is not None:
                spans.rough.memo = self.bfloat16
        return spans

    def report(self) -> dict[str, list[int]]:
        """Per scorer, [sentences forwarded, sentences answered from the memo]."""
        memos = {"float32": self.float32, "bfloat16": self.bfloat16}
        return {name: [memo.fresh, memo.hits] for name, memo in memos.items()}


def through(memo: ScoreMemo | None, fn: Callable[[list[list[int]]], Sequence[float]],
            seqs: Sequence[Sequence[int]]) -> tuple[list[float], int]:
    """(`fn(seqs)`, through `memo` where given; the count of sentences `fn` was given to forward)."""
    if memo is None:
        return list(fn([list(s) for s in seqs])), len(seqs)
    before = memo.fresh
    return memo.scored(fn, seqs), memo.fresh - before


def memo_screen(spans: Any, memos: ScoreMemos | None) -> Any:
    """`spans` with `memos` attached where given (option `cls_memo`), else as it is."""
    return memos.attach(spans) if memos is not None else spans
