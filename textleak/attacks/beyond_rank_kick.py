"""A slow sweep's kick (`beyond_rank --option sweep_kick=K`, #16, session 47, off): where a sweep of the target
descent (`beyond_rank_targets.TargetDescent._sweep`) brings its pair less than SLOW (relative) nearer its state, the
track is cut by K tokens (each the deletion whose state stands nearest, taken even where farther) and given one pass
of single changes (`TargetDescent._pass`); the cut track replaces the track where it ends nearer.

Why (recipes/measured/large_batch_s47/README.md; SST-2 dev 0 of 64 at 1200 CPU s, the descent's sweeps logged and
read against the truth, diagnosis only): at 1200 CPU s the sweeps go on, but most of the late ones bring their pair
~1% or less nearer and change no word that counts. At the sweeps' start only 6 of 50 pairs have their sentence's
length; the tracks that reach ~0.1 of their states are mostly too long (16 tokens for 7 or 13, 21 for 15, 44 for 23:
a longer track has more tokens to fit a state with), and there each sweep buys ~1e-3 of distance while the stall's
one-token resize, tried only where a sweep changes nothing, fires rarely and then mostly inserts. A deletion alone
rarely comes nearer (session 40: where a stall kept an insertion no deletion gained), so the kick takes K of them
at once and lets a pass re-fit the rest before it is judged: a step out of the long track's local minimum.

Measured (K 2, side by side, recipes/measured/large_batch_s47/README.md): SST-2 0 at 800 CPU s 53.36 / 35.95 against
the defaults' 53.87 / 35.91, 15 exact in both (25 kicks, 5 kept; 93 pair sweeps against 104); CoLA 0 at 450 CPU s
59.88 / 42.29, 16 exact, against 59.94 / 41.23, 14 (19 kicks, 6 kept; 8 pairs reached against 6). Off (ROUGE-1 fell).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

#: a sweep that brings its pair less than this share of its distance nearer is slow (kicked, with `kick`)
SLOW = 0.01


def kicked(descent: Any, seq: list[int], target: torch.Tensor, options: Sequence[list[int]], best: float
           ) -> tuple[list[int], float]:
    """`seq` cut by `descent.kick` tokens (nearest deletions first) and passed once (`descent._pass`), where that
    ends nearer than `best`; else `seq`, `best`. A track is kicked once (`descent.kicks["from"]`); `descent.kicks`
    counts the kicks tried ("tried") and kept ("kept")."""
    seen = descent.kicks.setdefault("from", set())
    if tuple(seq) in seen or len(seq) - descent.kick < 3:
        return seq, best
    seen.add(tuple(seq))
    cut, d = list(seq), best
    for _ in range(descent.kick):
        deletions = [cut[:p] + cut[p + 1:] for p in range(1, len(cut) - 1)]
        (k,), (d,) = descent._nearest(deletions, target)
        cut = deletions[k]
    cut, d, _ = descent._pass(cut, target, options, d)
    descent.kicks["tried"] = descent.kicks.get("tried", 0) + 1
    if d >= best:
        return seq, best
    descent.kicks["kept"] = descent.kicks.get("kept", 0) + 1
    return cut, d


def kick_report(descent: Any) -> dict[str, Any]:
    """The report's "kicks" entry (empty without `kick`)."""
    if descent.kick <= 0:
        return {}
    return {"kicks": {"tried": descent.kicks.get("tried", 0), "kept": descent.kicks.get("kept", 0)}}
