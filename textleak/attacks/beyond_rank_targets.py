"""Far past the rank limit, each missing sentence descended onto its own last-layer [CLS] state
(`leaks.pooled`: a two-class BERT pooler's gradient disaggregated into one state per sentence).

The sentence spans (`leaks.sentences`) certify a whole sentence but rank partial ones poorly: one
token wrong and eight wrong score alike (CoLA batch 64, span score median 3.40 / 3.70, true -2.19).
A sentence's own state is a point, not a 64-dimensional span, and its distance falls with every
token put right (CoLA batch 64, relative distance with 1 / 2 / 4 / 8 tokens wrong: 0.25 / 0.42 /
0.64 / 0.81). So each track the finish assembled is matched to a state (Hungarian, on the relative
distance of its [CLS] state) and descended position by position: at each position, every token its
column allows, the one nearest the state kept, until a sweep changes nothing (`TargetDescent`).
Tracks are swept in turn so that every one gets time under the budget.

Measured (ground truth, recipes/measured/large_batch_cls_s22/): from the truth with 2 / 4 / all
content tokens replaced within their columns, descending onto the true state brought back 5 / 4 /
3 of CoLA batch 64's first 8 sentences exactly. Matching a track to the nearest state does not by
itself rank tail exchanges better than the spans (200 exchanges, each configuration matched anew:
0.82 / 0.65 / 0.43 of right links preferred with 30 / 60 / 80% of tokens wrong, spans 0.88 / 0.67 /
0.46), so the states are used to descend, not to exchange. In the attack (`beyond_rank --option
targets=true --option finish=0.5`, dev batch 0 of 64, budget 1200 s, both arms side by side, ~255-286 CPU
s each): CoLA ROUGE-1/2 39.7/23.8 -> 46.7/24.6 (the share alone: 39.9/24.6), SST-2 46.1/29.0 -> 47.5/28.9,
certified unchanged (7, 9): no track reaches its state exactly, its length being the assembly's
(recipes/measured/large_batch_cls_s22/README.md). On by default since session 24 (RT batch 64 at 600 CPU s: a
tie, 28.1 against 27.9; recipes/measured/large_batch_rt_s24/).

Where it loses (session 25, defaults, dev batch 0 of 64, 450 CPU s, read against the truth afterwards;
recipes/measured/large_batch_s25/): the pairing is blind to length (14 of 56 CoLA pairs, 6 of 50 SST-2, have
the length of their state's sentence) and the sweeps are slow (3 of 56 CoLA tracks stalled within the budget,
none on SST-2, where 12 pairs got no sweep); every truth is 1e-4 from its state, every track >= 0.03 (the
search fails, not the objective). `lengths` (off): a stalled sweep tries one-token deletions and insertions
(`_resized`); CoLA exact 8 -> 9 and 8 -> 10 in two side-by-side pairs (the 2: 7 -> 8 and 8 -> 7 tokens, onto
their states), SST-2 unchanged.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections import Counter
from typing import Any, Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ..core import budget
from ..core.device import screen_count
from ..text.layouts import Layout
from ..text.leaks.pooled import ITERS, pooled_states
from ..text.leaks.residuals import padded
from .beyond_rank_drafts import BIAS, StateDrafts
from .beyond_rank_guided import GuidedSweeps
from .beyond_rank_invert import length_logp
from .beyond_rank_kick import SLOW, kick_report, kicked
from .beyond_rank_rough import RoughStates
from .beyond_rank_stall import paired, resized

log = logging.getLogger(__name__)

#: relative distance to a state under which a sentence is taken as that state's (true sentences
#: 1e-4 to 3e-4 off, one token wrong 0.25 median on CoLA batch 64)
HIT = 1e-2
#: each position's best single changes tried in pairs once a sweep stalls (`TargetDescent._pairs`)
PAIR = 3
#: with `defer`: tracks of this many tokens or more ([CLS] and [SEP] counted) are held back where far from their
#: states. Session 34's sweeps (defaults' drafts and sweeps on session 32's dumps, read against the truth,
#: large_batch_s34/sweeps_read.txt): the sweeps of tracks of 10+ tokens farther than 0.3 cost SST-2 dev 0 230 of 326
#: CPU s and lost bigrams (33 sweeps, F2 summed -1.28; the rest +2.30 in 95 CPU s), CoLA dev 0 91 of 251 (-0.53;
#: the rest +5.91), while second sweeps of the rest still gained (CoLA +3.04 in 33)
DEFER_LENGTH = 10
#: with `defer`: from this round of sweeps on no pair is held back. Until session 38 the rounds stopped here, the last
#: one sweeping the held pairs; CoLA 0 batch 64 at 1200 CPU s stopped there with 142 CPU s left (67.0 / 45.4), and
#: rounds that went on holding them read 61.4 / 47.0, 25 pairs never swept (recipes/measured/large_batch_s38/)
RELEASE_ROUND = 8
#: `sweep_screen="auto"` where bfloat16 is fast: the 4 nearest of each sweep position's candidates at bfloat16
#: rescored at float32 (batch 64 at 450 CPU s side by side, large_batch_s36/: CoLA 0 58.1/36.4 -> 60.7/41.2, SST-2 0
#: 49.5/30.9 -> 50.1/32.0, RT 0 28.2/11.1 -> 29.5/11.0; 1.6-1.8x as many pair sweeps)
SCREEN = 4


def cls_states(layout: Layout, seqs: Sequence[Sequence[int]], chunk: int = 256, row: bool = False) -> torch.Tensor:
    """The last layer's [CLS] states [len(seqs), H] (float64, on the CPU) of sentences of any lengths, padded
    in chunks of `chunk`. `row` (`cls_row_only`): the last layer run for [CLS] alone where the layout can
    (`Layout.first_states`; the same states to float32 rounding), else the full forward."""
    out = []
    for i in range(0, len(seqs), chunk):
        ids, mask = padded(seqs[i:i + chunk], layout.device)
        with torch.no_grad():
            h = layout.first_states(ids, mask) if row else None
            out.append((layout.hidden_states(ids, mask)[:, 0] if h is None else h).double().cpu())
    return torch.cat(out)


class TargetDescent:
    """Descends tracks onto the batch's per-sentence states (module doc).

    run(tracks, found, allowed) -> tracks, each matched one descended; allowed[p]: the tokens that may
    stand at position p. `report` says how many states were read and how many tracks reached one."""

    def __init__(self, layout: Layout, gradients: dict, rank: int, specials: set[int], seed: int = 0,
                 sweeps: int | None = None, invert: Any = None, pooled: Any = None, lengths: bool = False,
                 guided: int = 0, merge: float = 0.0, rounds: int = 0, pairing: float = 0.0, iters: int = 0,
                 drafts: int = 0, bias: float = BIAS, hit: float = 0.0, draft_keep: float = 0.0,
                 draft_pack: bool = False, draft_spend: bool = False, order: str = "batch", defer: float = 0.0,
                 defer_length: int = DEFER_LENGTH, screen: int | str = 0, draft_bfloat16: bool = False,
                 release: float = 0.0, revert: float = 0.0, delete_first: bool = False, screen_copy: bool = False,
                 cls_row_only: bool = False, pooled_normal: bool = False, kick: int = 0, known: bool = False):
        self.layout, self.gradients, self.rank, self.specials = layout, gradients, rank, specials
        self.screen = screen_count(screen, SCREEN, layout.device)  # >0: sweeps screened at bfloat16, K rescored
        self.cls = functools.partial(cls_states, row=cls_row_only)  # the states' forward (`cls_states`' `row`)
        self.rough = RoughStates(layout, self.cls, screen_copy)  # the screen's pass (`beyond_rank_rough`)
        self.scored = Counter()  # with `screen`: candidates scored screened ("rough") and exactly ("exact")
        self.order = order  # the pairs' order in each round of sweeps (`_ordered`)
        self.defer, self.defer_length = defer, defer_length  # >0: long tracks this far held back (`_held`)
        self.release = release  # >0: the held pairs let go once this share of the sweeps' time is spent (`_sweeps`)
        self.revert = revert  # >0: a released pair left this far from its state put back as released (`_reverted`)
        self.drafts, self.bias = drafts, bias  # >0: tracks redrawn from their states first (`beyond_rank_drafts`)
        self.draft_keep = draft_keep or 1.0  # a draft kept under this fraction of its track's distance (0: 1, nearer)
        self.draft_pack = draft_pack  # drafts of nearby lengths relaxed in one padded batch (`beyond_rank_drafts`)
        self.draft_spend = draft_spend  # with draft_pack: the saving spent on more steps (`beyond_rank_drafts`)
        self.draft_bfloat16 = draft_bfloat16  # the drafts relaxed under bfloat16 autocast (`beyond_rank_drafts`)
        self.hit = hit or HIT  # a track this near its state is done (no more steps, counted `reached`)
        self.guided = guided  # >0: gradient-guided steps, this many candidates a position (`beyond_rank_guided`)
        self.lengths = lengths  # a stalled sweep tries every one-token deletion and insertion (`_resized`)
        self.delete_first = delete_first  # with `lengths`: a stall's deletions scored first (`beyond_rank_stall`)
        self.kick, self.kicks = kick, {}  # >0: a slow sweep cuts its track by this many tokens (`beyond_rank_kick`)
        self.resized, self.stalls, self.deleted = 0, 0, 0  # length changes kept; sweeps changing no token; deletions
        self.swept: dict[str, int] = {}  # `_sweeps`' rounds, pair sweeps, pairs never swept, sweeps of a stalled pair
        self.rng, self.sweeps = random.Random(seed), sweeps  # most rounds of sweeps (None: till one changes nothing)
        self.invert = invert  # a `beyond_rank_invert.StateInversion`: short lengths inverted first
        self.pooled = pooled  # the `leaks.pooled` states, where they were read already (`beyond_rank_first`)
        self.merge = merge  # `leaks.pooled.pooled_states`' merge, with up to `rank` rounds (0: off, 8 rounds)
        self.rounds = rounds  # the pooled states' most rounds (0: `rank` with `merge`, else 8)
        self.iters = iters  # the pooled states' solver iterations a start (0: `leaks.pooled.ITERS`)
        self.pooled_normal = pooled_normal  # the pooled states' solver steps without the Jacobian (`leaks.pooled`)
        self.known = known  # the found sentences' states given to the pooled states' solver first (`leaks.pooled`)
        self.pairing = pairing  # >0: the pairing weighs the track's length at the state (`_paired`)
        self.pairs: list[tuple[int, int]] = []
        self.paired: torch.Tensor | None = None
        self.report: dict[str, Any] = {}

    def states(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.cls(self.layout, seqs)

    def run(self, tracks: list[list[int]], found: Sequence[list[int]], allowed: Sequence[set[int]]
            ) -> list[list[int]]:
        tracks = [list(t) for t in tracks]
        options = [sorted(t for t in a if t not in self.specials) for a in allowed]
        clock = budget.now()
        seen: list[tuple[list[list[int]], torch.Tensor]] = []
        got = self.pooled or pooled_states(self.layout, self.gradients, self.rank,
                                           lambda n: self._seen(tracks, options, n, seen), merge=self.merge,
                                           rounds=self.rounds or (self.rank if self.merge else 8),
                                           iters=self.iters or ITERS, normal=self.pooled_normal,
                                           known=self.states(found) if self.known and found else None)
        if got is None or not tracks:
            self.report = {"states": 0}
            return tracks
        targets = self._unfound(got.states, found)
        inverted: list[list[int]] = []
        if self.invert is not None and not budget.expired():
            tracks, targets, inverted = self._inverted(tracks, targets, options, seen)
            if not tracks or not len(targets):
                self.report = {"states": len(got.states), "inverted": self.invert.report}
                return tracks + inverted
        dist = torch.cdist(self.states(tracks), targets) / targets.norm(dim=1)[None]
        self.pairs, self.paired = self._paired(dist, tracks, targets, seen), targets  # (track, row of `paired`)
        pairs = [(r, targets[c], float(dist[r, c])) for r, c in self.pairs]
        best = {r: d for r, _, d in pairs}
        drafts = StateDrafts(self, self.drafts, self.bias, self.rng.randrange(2 ** 31), self.draft_keep,
                             self.draft_pack, self.draft_spend, self.draft_bfloat16) if self.drafts > 0 else None
        marks = [clock, budget.now()]  # each stage's end on the budget clock: states, drafts, sweeps
        if drafts is not None and not budget.expired():
            drafts.run(tracks, pairs, best, options)
        marks.append(budget.now())
        guided = None
        if self.guided > 0:
            guided = GuidedSweeps(self, options, top=self.guided, hit=self.hit)
            guided.run(tracks, pairs, best)
        else:
            with self.rough.region(self.screen > 0):  # one autocast region: each weight cast once
                self._sweeps(tracks, pairs, best, options)
        marks.append(budget.now())
        seconds = {k: marks[i + 1] - marks[i] for i, k in enumerate(("states", "drafts", "sweeps"))}
        self.report = {"states": len(got.states), "targets": len(targets), "matched": len(pairs),
                       "seconds": {k: round(v, 1) for k, v in seconds.items()}, **self.swept,
                       "reached": sum(d < self.hit for d in best.values()),
                       "stalls": self.stalls, **kick_report(self),
                       **({"resized": self.resized, "deleted": self.deleted} if self.lengths else {}),
                       "screen": self.screen, **({"scored": dict(self.scored)} if self.screen > 0 else {}),
                       **({"guided": {"steps": guided.steps, "rounds": guided.rounds, "exhaustive": guided.full}}
                          if guided is not None else {}),
                       **({"drafts": drafts.report} if drafts is not None else {}),
                       **({"inverted": self.invert.report} if self.invert is not None else {})}
        log.debug("target descent: %s", self.report)
        return tracks + inverted

    def _paired(self, dist: torch.Tensor, tracks: Sequence[list[int]], targets: torch.Tensor, seen: list
                ) -> list[tuple[int, int]]:
        """(track, state) pairs, one-to-one (Hungarian): on the relative distance of their [CLS] states, plus, with
        `pairing`, that weight times minus the log-probability of the track's length at the state (`length_logp`,
        from the random sentences drawn as starts)."""
        cost = dist
        if self.pairing > 0 and seen:
            drawn = ([s for q, _ in seen for s in q], torch.cat([h for _, h in seen]))
            cost = dist - self.pairing * length_logp(drawn, targets, [len(t) for t in tracks]).T
        rows, cols = linear_sum_assignment(cost.numpy())
        return [(int(r), int(c)) for r, c in zip(rows, cols)]

    def _sweeps(self, tracks: list[list[int]], pairs: Sequence[tuple[int, torch.Tensor, float]],
                best: dict[int, float], options: Sequence[list[int]]) -> None:
        """Exhaustive sweeps (`_sweep`), the pairs in turn, until a round changes nothing (or `sweeps` rounds, where
        set; until session 38 8, which a 1200 CPU s run reached with time left). With `defer`, a round holds back
        the long tracks far from their states (`_held`) until a round of the others changes nothing; the next round
        sweeps them too, as does every round from the RELEASE_ROUND-th on. With `release` (F), the held pairs are
        let go for good once F of the budget's time left as the sweeps began is spent (`_released`). `swept` counts
        the rounds begun, the pair sweeps, the pairs never swept (not within `hit`), the sweeps of a pair whose last
        sweep changed nothing ("again") and, with `defer`, the pairs the last round held back ("held"; with
        `release`, "released": the sweeps made after the release)."""
        done, still, touched = Counter(), set(), set()  # counts; pairs whose last sweep changed nothing; swept
        was_held: set[int] = set()  # with `revert`: the pairs some round held back
        freed: dict[int, tuple[list[int], float]] = {}  # with `revert`: each such pair's track as first swept
        release, late = False, self._released()  # this round sweeps the held pairs too; the release's test
        for k in itertools.count() if self.sweeps is None else range(self.sweeps):
            changed = False
            done["rounds"] += 1
            last = k >= RELEASE_ROUND - 1 or (self.sweeps is not None and k == self.sweeps - 1)
            held = set() if release or late() or last else self._held(tracks, best)
            was_held |= held
            for r, target, _ in self._ordered(pairs, tracks, best):
                if budget.expired():
                    break
                if held and late():
                    held = set()
                if best[r] < self.hit or r in held:
                    continue
                if self.revert > 0 and r in was_held and r not in freed:
                    freed[r] = (list(tracks[r]), best[r])
                done["again"] += r in still
                done["released"] += late()
                seq, d = self._sweep(tracks[r], target, options, best[r])
                changed |= d < best[r]
                (still.discard if d < best[r] else still.add)(r)
                tracks[r], best[r], done["swept"] = seq, d, done["swept"] + 1
                touched.add(r)
            done["held"] = len(held)
            if (not changed and not held) or budget.expired():
                break
            release = not changed
        unswept = sum(1 for r, _, _ in pairs if r not in touched and best[r] >= self.hit)
        self.swept = {"rounds": done["rounds"], "swept": done["swept"], "unswept": unswept, "again": done["again"],
                      **({"held": done["held"]} if self.defer > 0 else {}),
                      **({"released": done["released"]} if self.release > 0 else {}),
                      **({"reverted": self._reverted(tracks, best, freed)} if self.revert > 0 else {})}

    def _reverted(self, tracks: list[list[int]], best: dict[int, float], freed: dict[int, tuple[list[int], float]]
                  ) -> int:
        """With `revert` (D): each pair held back and then swept (`freed`: its track and distance as first swept)
        that its sweeps left at D or farther from its state is put back as it was (tracks, best changed in place):
        sweeps of long tracks far from their states buy words at the cost of the draft's word order (large_batch_s34/
        and _s39/). Returns how many were put back."""
        back = [r for r, (seq, d) in freed.items() if best[r] >= self.revert and tracks[r] != seq]
        for r in back:
            tracks[r], best[r] = freed[r]
        return len(back)

    def _released(self) -> Any:
        """() -> whether the held pairs are let go: with `release` (F in (0, 1]), once the budget's seconds left are
        at most (1 - F) of those left now (never without a budget); without, never."""
        left = budget.current().remaining()
        if self.release <= 0 or left == float("inf"):
            return lambda: False
        at = (1 - self.release) * left
        return lambda: budget.current().remaining() <= at

    def _held(self, tracks: Sequence[list[int]], best: dict[int, float]) -> set[int]:
        """With `defer` (>0): the pairs (track rows) a round holds back, tracks of `defer_length` tokens or more
        farther than `defer` from their states at the round's start; none where no other pair is left to sweep."""
        if self.defer <= 0:
            return set()
        left = [r for r, d in best.items() if d >= self.hit]
        held = {r for r in left if len(tracks[r]) >= self.defer_length and best[r] > self.defer}
        return held if len(held) < len(left) else set()

    def _ordered(self, pairs: Sequence[tuple[int, torch.Tensor, float]], tracks: Sequence[list[int]],
                 best: dict[int, float]) -> list[tuple[int, torch.Tensor, float]]:
        """The pairs in the order one round sweeps them: "batch" as paired (the assembly's order), "near" the pairs
        nearest their states first (at the round's start), "short" the shortest tracks first (a sweep's cost grows
        with the track's positions times their candidates)."""
        if self.order == "near":
            return sorted(pairs, key=lambda p: best[p[0]])
        if self.order == "short":
            return sorted(pairs, key=lambda p: len(tracks[p[0]]))
        return list(pairs)

    def _seen(self, tracks: Sequence[list[int]], options: Sequence[list[int]], n: int,
              seen: list[tuple[list[list[int]], torch.Tensor]]) -> torch.Tensor:
        """The [CLS] states of n random sentences (`_random`), kept in `seen` for the length discriminant."""
        seqs = self._random(tracks, options, n)
        h = self.states(seqs)
        seen.append((seqs, h))
        return h

    def _inverted(self, tracks: list[list[int]], targets: torch.Tensor, options: Sequence[list[int]],
                  seen: list) -> tuple[list[list[int]], torch.Tensor, list[list[int]]]:
        """The states `invert` brings back (`beyond_rank_invert`): out of the targets, each with one track of
        its length out of the tracks."""
        drawn = ([s for q, _ in seen for s in q], torch.cat([h for _, h in seen])) if seen else ([], targets[:0])
        got = self.invert.run(targets, [len(t) for t in tracks], options, drawn)
        out, keep = [], torch.ones(len(targets), dtype=torch.bool)
        for j, seq in got:
            k = next((i for i, t in enumerate(tracks) if len(t) == len(seq)), None)
            if k is None:
                continue
            tracks = tracks[:k] + tracks[k + 1:]
            keep[j] = False
            out.append(seq)
        return tracks, targets[keep], out

    def _unfound(self, states: torch.Tensor, found: Sequence[list[int]]) -> torch.Tensor:
        """The states no found sentence stands at."""
        if not found:
            return states
        near = (torch.cdist(self.states(found), states) / states.norm(dim=1)[None]).min(0)[0]
        return states[near >= HIT]

    def _sweep(self, seq: list[int], target: torch.Tensor, options: Sequence[list[int]], best: float
               ) -> tuple[list[int], float]:
        """One pass over the content positions (`_pass`); with `kick`, where it gains under SLOW, the track cut and
        passed (`beyond_rank_kick`); where nothing changed, a length change and the best pair of changes."""
        start = best
        seq, best, tops = self._pass(seq, target, options, best)
        if self.kick > 0 and best > start * (1 - SLOW) and not budget.expired():  # `beyond_rank_kick`
            seq, best = kicked(self, seq, target, options, best)
        if best < start or budget.expired():
            return seq, best
        self.stalls += 1
        if self.lengths:
            seq, best = self._resized(seq, target, options, best)
            if best < start or budget.expired():
                return seq, best
        return self._pairs(seq, target, tops, best)

    def _pass(self, seq: list[int], target: torch.Tensor, options: Sequence[list[int]], best: float
              ) -> tuple[list[int], float, dict[int, list[int]]]:
        """The positions in random order, each taking its token nearest the target where nearer; -> the track, its
        distance and each position's PAIR nearest tokens (cut short where the budget runs out)."""
        n, tops = len(seq), {}
        for p in self.rng.sample(range(1, n - 1), n - 2):
            if budget.expired():
                break
            trial = [seq[:p] + [t] + seq[p + 1:] for t in options[p] if t != seq[p]] if p < len(options) else []
            if not trial:
                continue
            order, d = self._nearest(trial, target, PAIR)
            tops[p] = [trial[k][p] for k in order]
            if d[0] < best:
                seq, best = trial[order[0]], d[0]
        return seq, best, tops

    def _resized(self, seq: list[int], target: torch.Tensor, options: Sequence[list[int]], best: float
                 ) -> tuple[list[int], float]:
        """A stalled sweep's one-token length change (`beyond_rank_stall.resized`; `delete_first`: deletions first)."""
        return resized(self, seq, target, options, best)

    def _pairs(self, seq: list[int], target: torch.Tensor, tops: dict[int, list[int]], best: float
               ) -> tuple[list[int], float]:
        """Two positions changed at once (`beyond_rank_stall.paired`)."""
        return paired(self, seq, target, tops, best)

    def _nearest(self, trial: Sequence[list[int]], target: torch.Tensor, top: int = 1) -> tuple[list[int], list[float]]:
        """The indices of the `top` trials whose [CLS] states stand nearest `target` [H], nearest first, and their
        relative distances, always from the model as it is (float32). With `screen` (K > 0) and more than K trials,
        every trial is first scored with the model run at bfloat16 (autocast: on a CPU with AMX ~2.7x cheaper a
        token, states within ~1e-2 relative of float32), and only the max(K, top) nearest are rescored exactly:
        every change a sweep keeps is a float32 gain, only which candidates get rescored is the screen's (MiniLM,
        CoLA batch 64 tracks a quarter wrong: the float32 best was the screen's first at 41 of 42 positions and
        among its first 2 at all). The screen's pass: `beyond_rank_rough.RoughStates` (`screen_copy`: a bfloat16
        copy of the model)."""
        keep = list(range(len(trial)))
        if 0 < self.screen < len(trial) and top < len(trial):
            rough = (self.rough.states(trial) - target).norm(dim=1)
            keep = torch.argsort(rough)[:max(self.screen, top)].tolist()
            self.scored["rough"] += len(trial)
        with self.rough.exact():
            d = (self.states([trial[k] for k in keep]) - target).norm(dim=1) / target.norm()
        self.scored["exact"] += len(keep)
        order = torch.argsort(d)[:top].tolist()
        return [keep[i] for i in order], [float(d[i]) for i in order]

    def _random(self, tracks: Sequence[list[int]], options: Sequence[list[int]], n: int) -> list[list[int]]:
        """n sentences of the tracks' lengths, each position's token drawn from what its column allows."""
        out = []
        for _ in range(n):
            t = self.rng.choice(tracks)
            out.append([t[0]] + [self.rng.choice(options[p]) if p < len(options) and options[p] else t[p]
                                 for p in range(1, len(t) - 1)] + [t[-1]])
        return out

