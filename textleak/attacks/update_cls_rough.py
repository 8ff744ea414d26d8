"""The [CLS] descent's trials ranked at bfloat16 first (`exact-update`'s option `cls_rough=K`; 0: off; #15, session 45,
`recipes/measured/fedavg_cls16_s45`).

Session 44 (`recipes/measured/fedavg_batch_s44`, SST-2 dev 0 of 4, FedAvg K 8, lr 1e-5, 300 CPU s under cProfile):
the [CLS] start (`update_cls.cls_start`, its descents, the length start) was 58% of the small-lr path, nearly all of
it `ClsSpans.score`'s float32 forwards, one a trial sentence. `beyond_rank_targets.TargetDescent._nearest` screens
its candidates the same way at batch 64 (option `sweep_screen`): every candidate scored on a bfloat16 copy of the
model (`beyond_rank_rough.RoughStates` with `copy_model`: made once, no casts), only the K nearest rescored at
float32. Here every trial of a `ClsSpans._keep` (and of `_substitute`'s relocation) gets the spans' score on that
copy; only the K trials of least bfloat16 gain (trial minus current, both at bfloat16) get the float32 `score`, and
of those the float32 gain decides as before: the current sentences' float32 scores stay the reference, so every
change kept is a float32 gain; only which trials are weighed is the screen's. Where the device runs bfloat16 slowly
(`core.device.fast_bfloat16`: emulated, it costs more than it saves) the option is off.
"""

from __future__ import annotations

from typing import Any

from ..core.device import fast_bfloat16
from .beyond_rank_rough import RoughStates
from .update_cls_memo import through


class RoughScreen:
    """Option `cls_rough` on one `update_cls.ClsSpans` (module doc): `top` keeps a list of trials' `keep` of least
    bfloat16 gain. `forwards`: sentences forwarded at bfloat16 (the spans' own `forwards` count the float32 ones;
    with option `cls_memo`, only sentences its `memo` had not seen)."""

    def __init__(self, spans: Any, keep: int):
        self.keep, self.forwards = keep, 0
        self.memo: Any = None  # option `cls_memo` (`update_cls_memo.ScoreMemo`): bfloat16 scores kept per sentence
        self.rough = RoughStates(spans.layout, spans.scored, copy_model=True)  # `scored(view, seqs)` on the copy

    def top(self, seqs: list[list[int]], trials: list[dict[int, list[int]]]) -> list[dict[int, list[int]]]:
        """The `keep` trials (sentence index -> new sentence) of least summed bfloat16 score change against the
        current sentences `seqs` (also read at bfloat16), in their given order (ties broken as without the screen);
        all of them where there are no more than `keep`."""
        if len(trials) <= self.keep:
            return trials
        changed = sorted({i for t in trials for i in t})
        unique = list(dict.fromkeys(tuple(s) for t in trials for s in t.values()))
        asked = [list(s) for s in unique] + [seqs[i] for i in changed]
        got, forwarded = through(self.memo, self.rough.states, asked)
        self.forwards += forwarded
        rough, base = dict(zip(unique, got)), dict(zip(changed, got[len(unique):]))
        gain = [sum(rough[tuple(s)] - base[i] for i, s in t.items()) for t in trials]
        kept = sorted(sorted(range(len(trials)), key=gain.__getitem__)[:self.keep])
        return [trials[k] for k in kept]


def rough_screen(spans: Any, keep: int) -> Any:
    """`spans` with option `cls_rough` = `keep` set on it (`spans.rough`; None where `keep` is 0 or the device
    runs bfloat16 slowly); `spans` itself (None passes through)."""
    if spans is not None:
        spans.rough = RoughScreen(spans, keep) if keep > 0 and fast_bfloat16(spans.layout.device) else None
    return spans
