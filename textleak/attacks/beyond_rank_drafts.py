"""The target descent's starting tracks redrawn from their own states (`beyond_rank --option drafts=STEPS`, #16,
session 30).

`beyond_rank_targets.TargetDescent` pairs each track the finish assembled (by length, from the columns and the
bigram prior: the same generic reading for every state) with a pooled state and descends it there. Far past the
limit those tracks start far from their sentences (CoLA batch 0 of 64: unigram F1 0.31), and the descent ends in
another basin (F1 0.56, 2 exact in 160 CPU s), while a start with the right words mostly in place ends with 20
exact in the same time (recipes/measured/large_batch_s29/, section 4).

Here every paired track is redrawn from its own state before the descent: at the track's length, per position a
softmax over the column's candidates mixes their word embeddings, Adam on the relative distance of the mixture's
[CLS] state to the pair's state, the temperature lowered in the second half, rounded (as
`beyond_rank_invert.StateInversion` relaxes; here all tracks of one length at once, each position's logits started
`bias` up at the assembled track's token). The drawn sentence replaces the track where its state is nearer the
pair's; with `keep` < 1 (`beyond_rank --option draft_keep=F`) only where its distance is under F times the track's.

Measured (MiniLM, dev batch 0 of 64, recipes/measured/large_batch_s30/): offline on the CoLA dump, 160 CPU s with
`guided=8`, drafts of 60 steps (78 CPU s) lift the start's F1 0.31 -> 0.46 and the end 0.557 -> 0.592, 2 -> 3
exact (with oracle lengths: 6 = 6). In the attack, 450 CPU s, side by side against the defaults: CoLA ROUGE-1/2
45.8/23.7 -> 50.4/28.4 (7 -> 8 exact), SST-2 46.8/28.0 -> 47.8/24.9 (9 = 9): off (SST-2's ROUGE-2).

Why SST-2's ROUGE-2 falls (session 31, the SST-2 dump, the defaults' sweeps, 160 CPU s, recipes/measured/
large_batch_s31/): a draft keeps its track's length, and 40 of the 47 kept are of another length than their
state's sentence; those gain unigrams (F1 0.30 -> 0.35) but lose bigram order (F2 0.17 -> 0.12; the bigram prior's
NLL +2.5 nats a token), while the 7 of the right length gain both (0.26 -> 0.32). The drafts that moved their
state most are mostly those: `keep` 0.5 kept 12 (4 of the right length), ends F1 / F2 0.333 / 0.193 -> 0.353 /
0.196 (all drafts: 0.366 / 0.163). In the attack, `drafts=60 draft_keep=0.5` against the defaults, 450 CPU s,
side by side: SST-2 46.8/28.1 -> 48.8/29.7 (9 = 9 exact), CoLA 46.3/22.6 -> 50.0/29.8 (7 -> 8), RT 29.1/10.8 ->
28.6/10.8 (1 = 1; the lead, load 2.3-4.1): `beyond_rank`'s defaults since session 31.

Where the drafts' time goes (session 32, the s32 dumps, recipes/measured/large_batch_s32/): one length a batch, 60
steps cost ~2.0 CPU s a batch plus ~0.034 a token (1 track of 26 tokens: 3.0 s; 8 of 12: 5.3 s), so SST-2's 53
tracks over 24 lengths cost 84 CPU s, most of it the per-batch part. A draft's early ratio does not tell whether it
will be kept: the kept ones stand at ratio 1 (the track) until step ~10 and at up to 1.6-2.0 at step 40, going
under 0.5 only as the temperature falls (stopping at step 20 where over 0.8 loses 6 of SST-2's 10, 24 of CoLA's
29), and the track's own distance does not separate them (medians 0.54 / 0.55). With `pack`
(`beyond_rank --option draft_pack=true`, off) nearby lengths share one right-padded batch (`packed`: the cuts
that minimise batches x OVERHEAD + rows x longest length): SST-2 4 batches, 84 -> 45 CPU s (kept 10 -> 12),
CoLA 3, 56 -> 38 (29 -> 27; the draws' noise differed: since session 33 a packed track starts from the noise it
would have drawn alone, so packing changes the drafts' time only), the rest left to the descent. In the attack,
450 CPU s, side by side against the defaults (session 32's draws): SST-2 48.5/30.0 -> 49.5/30.6 (9 = 9 exact), CoLA
54.8/30.0 -> 55.2/26.2 (8 = 8): off (CoLA's ROUGE-2). Same draws (session 33, large_batch_s33/, 450 CPU s; the
defaults' arms from earlier runs, which repeat within 0.4): CoLA batch 0 54.9/30.2 -> 58.1/32.9 (8 -> 9), batch 1
60.7/30.9 -> 60.5/31.5 (9 = 9); the saved time goes to the sweeps (batch 1: 68 -> 78 pair sweeps). With `spend`
too (`beyond_rank --option draft_spend=true`, session 33, off) the packing's saving goes to more steps of the drafts
(`spent`: each batch the steps its lengths' unpacked cost pays for), not to the sweeps: CoLA batch 0, 450 CPU s,
side by side (session 34, large_batch_s34/), 57.1/29.2 against the defaults' 55.8/30.5 (8 = 8 exact): off.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch

from ..core import budget
from ..core.device import fast_bfloat16
from .beyond_rank_invert import columns, relax

#: the relaxation's start: each position's logit this much up at the assembled track's token (CoLA batch 0 of 64,
#: 60 steps, recipes/measured/large_batch_s30/: drafts' unigram F1 0.31 -> 0.44 with 2, 0.34 from scratch)
BIAS = 2.0
#: with `pack`, a relaxation batch's fixed cost, in padded tokens: 60 steps of one batch cost ~2.0 CPU s plus ~0.034 a
#: token (rows x length) on MiniLM (SST-2 / CoLA dumps, one length a batch: 24 lengths, 76 CPU s / 14, 52;
#: recipes/measured/large_batch_s32/)
OVERHEAD = 60.0


class StateDrafts:
    """run(tracks, pairs, best, options) -> how many tracks were replaced; tracks (a list) and best (track index ->
    distance to its pair's state) changed in place; pairs: (track index, target state, distance). `descent`: the
    `TargetDescent` (its layout, and its `states` for the distances). pack: tracks of nearby lengths relaxed in one
    right-padded batch (`packed`; False: one length at a time). spend: with pack, each batch relaxes for `steps`
    times (its lengths' cost one at a time) / (its cost packed) (`spent`): the saving spent on more steps. bfloat16:
    the relaxation's forward passes under bfloat16 autocast where the device runs it fast (`core.device.fast_bfloat16`;
    elsewhere float32); the rounded drafts are still kept or dropped on their float32 distances."""

    def __init__(self, descent: Any, steps: int = 60, bias: float = BIAS, seed: int = 0, keep: float = 1.0,
                 pack: bool = False, spend: bool = False, bfloat16: bool = False):
        self.descent, self.layout, self.steps, self.bias = descent, descent.layout, steps, bias
        self.keep = keep  # a draft replaces its track only under this fraction of the track's distance (module doc)
        self.pack = pack and getattr(self.layout, "padding", None) is None  # right padding only
        self.spend = spend and self.pack
        self.half = bfloat16 and fast_bfloat16(self.layout.device)
        self.gen = torch.Generator().manual_seed(seed)
        self.report = {"drawn": 0, "kept": 0, "steps": 0, "batches": 0, **({"bfloat16": True} if self.half else {})}

    def run(self, tracks: list[list[int]], pairs: Sequence[tuple[int, torch.Tensor, float]], best: dict[int, float],
            options: Sequence[Sequence[int]]) -> int:
        targets = {r: t for r, t, _ in pairs}
        count = Counter(len(tracks[r]) for r in targets if len(tracks[r]) > 2)
        for group in packed(count) if self.pack else [[n] for n in sorted(count)]:  # one length: no padding
            if budget.expired():
                break
            rows = [r for r in targets if len(tracks[r]) in group]
            T = torch.stack([targets[r] for r in rows])
            steps = spent(self.steps, {n: count[n] for n in group}) if self.spend else self.steps
            drawn = self._relaxed([tracks[r] for r in rows], T, options, steps)
            d = (self.descent.states(drawn) - T).norm(dim=1) / T.norm(dim=1)
            self.report["drawn"] += len(rows)
            self.report["batches"] += 1
            for j, r in enumerate(rows):
                if float(d[j]) < self.keep * best[r]:
                    tracks[r], best[r] = drawn[j], float(d[j])
                    self.report["kept"] += 1
        return self.report["kept"]

    def _relaxed(self, seqs: list[list[int]], T: torch.Tensor, options: Sequence[Sequence[int]], steps: int
                 ) -> list[list[int]]:
        """Sentences (of one length, or right-padded to the longest), each relaxed onto its target row from its own
        tokens, and rounded (module doc)."""
        n, cls, sep = max(map(len, seqs)), seqs[0][0], seqs[0][-1]
        cols = columns(options, n, sep, self.layout.word_embeddings.weight.device)
        lengths = [len(s) for s in seqs] if any(len(s) < n for s in seqs) else None
        drawn, steps = relax(self.layout, self._started(seqs, cols), cols, cls, sep, T, steps, lengths, self.half)
        self.report["steps"] += steps
        return drawn

    def _started(self, seqs: list[list[int]], cols: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each position's logits [len(seqs), its column]: small noise, `bias` up at each sentence's own token. The
        noise is drawn length by length (ascending), each length's rows position by position, as one length a batch
        draws it: packed or not, a track starts from the same logits (and a padded row relaxes as alone), so
        `pack` changes the drafts' time, not the drafts. Past a row's length its logits are 0 (masked out)."""
        Z = [torch.zeros(len(seqs), len(c)) for c in cols]
        for n in sorted({len(s) for s in seqs}):
            rows = torch.tensor([r for r, s in enumerate(seqs) if len(s) == n])
            for p, c in enumerate(cols[:n - 2]):
                Z[p][rows] = 0.1 * torch.randn(len(rows), len(c), generator=self.gen)
        for p, (z, c) in enumerate(zip(Z, cols), start=1):
            at = {t: k for k, t in enumerate(c.tolist())}
            for r, s in enumerate(seqs):
                if p < len(s) - 1 and s[p] in at:
                    z[r, at[s[p]]] += self.bias
        return [z.to(c.device).requires_grad_(True) for z, c in zip(Z, cols)]


def packed(count: dict[int, int], overhead: float = OVERHEAD) -> list[list[int]]:
    """The lengths (length -> how many tracks) cut into runs of consecutive lengths, each relaxed as one padded
    batch, at the least cost: a batch costs `overhead` tokens plus its rows times its longest length (dynamic
    programming over the sorted lengths)."""
    ns = sorted(count)
    cost, cut = [0.0] + [float("inf")] * len(ns), [0] * (len(ns) + 1)
    for j in range(1, len(ns) + 1):
        for i in range(j):
            c = cost[i] + overhead + ns[j - 1] * sum(count[n] for n in ns[i:j])
            if c < cost[j]:
                cost[j], cut[j] = c, i
    out, j = [], len(ns)
    while j > 0:
        out.append(ns[cut[j]:j])
        j = cut[j]
    return out[::-1]


def spent(steps: int, count: dict[int, int], overhead: float = OVERHEAD) -> int:
    """The steps one packed batch (length -> how many tracks) can take for the time `steps` of its lengths relaxed
    one at a time would take: `steps` times their summed cost (each `overhead` plus its rows times its length) over
    the batch's (one `overhead` plus all its rows times the longest length); `packed` keeps that ratio >= 1."""
    alone = sum(overhead + k * n for n, k in count.items())
    return int(round(steps * alone / (overhead + sum(count.values()) * max(count))))
