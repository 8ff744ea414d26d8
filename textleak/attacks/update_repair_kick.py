"""A kick at the token repair's stall (`update_repair.BoxRepair.kick`, `exact-update`'s option `repair_kick`;
session 42; 3, at "block", by default since session 44).

Why (ground truth, scratch, `recipes/measured/fedavg_rt_lr5_s42`): RT dev batch 0 of 4 at K 8, lr 1e-5 reaches the same
end in every run since session 34 (72 of 123 tokens right, box misfit 5.72e-4), a local minimum of the repair's moves
(3 of 51 single steps toward the truth lower the misfit, session 35; the full sweep after the screened ones changes
nothing, sessions 36 and 39), and more of the same search changes nothing. The [CLS] spans' score
(`update_cls.ClsSpans.score`) prefers the truth in every sentence there (session 35) and is a second objective with
other minima. From that end, 3 [CLS] sweeps took it to 75 right (misfit 6.91e-4), and one screened repair sweep
after them to 77 right at 5.06e-4, below the end's. So at the screened sweeps' stall (before the block sweep there)
the batch is descended `sweeps` sweeps on the [CLS] spans (`ClsSpans.descend`, as the [CLS] start does, without
relocations) and the screened sweeps go on from there; at the next stall the same again, until a stall repeats a
batch seen at a stall before, the descent changes nothing or the deadline; then the block and full sweeps go on
from the stalled batch of least box misfit seen in this run, and the run ends on it where it would end above it
(the deadline between a kick and the next stall).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ..core.budget import now as budget_now
from .update_repair_moves import options_by_length

#: option `repair_kick_at`'s values (`Kick.at`): "stall" (session 42), the kick at the screened sweeps' stall before its
#: block sweep; "block" (session 43, the default since session 44), only after that block sweep kept nothing (where the
#: defaults went on to the full sweeps) and never in the race's traded start (`traded_kick_off`). Why "block": SST-2 b4
#: K 8 lr 1e-5 dev 1 at 800 CPU s (lead, `recipes/measured/fedavg_rt_lr5_s42/lead_sst2_1_800`) read 0.865 / 0.673 with
#: "stall" against the defaults' 0.994 / 0.980: the kicks took the block sweeps' place (2 block moves kept by the
#: defaults, none with the kick) and kept the traded start going, so the race never repaired the untraded start.
KICK_AT = ("stall", "block")


class Kick:
    """`BoxRepair.kick`: `due` at the end of each sweep of `BoxRepair.run`, called (`__call__`) at each stall of its
    screened sweeps (a sweep at the full screen `keep` that changed nothing, before its block sweep) with the repair
    and the batch where it stands (changed in place): True where it kicked (the screened sweeps go on), False where
    the block and full sweeps take over; `settle` at the run's end. `spans`: the run's
    `update_cls.ClsSpans`; `sweeps`: the [CLS] descent's sweeps per kick (option `repair_kick`); `at`: where in the
    stall (`KICK_AT`, option `repair_kick_at`)."""

    def __init__(self, spans: Any, sweeps: int, at: str = "stall"):
        self.spans, self.sweeps, self.at = spans, int(sweeps), at
        self.began: float | None = None
        self._fresh(None)

    def _fresh(self, began: float | None) -> None:
        """A new repair run (`BoxRepair.begin` set its `_began`): nothing seen yet."""
        self.began, self.seen, self.best, self.stalls = began, set(), None, []

    def due(self, repair: Any, seqs: list[list[int]], before: int, at: str = "stall") -> bool:
        """At the end of a sweep of `repair` (`before`: its changes when the sweep began), `at` "stall" before that
        stall's block sweep, "block" after it: whether it kicked, which it tries only at its own place (`self.at`)
        and where a screened sweep at the full screen (and the block sweep after it) changed nothing."""
        if at != self.at or repair._changes != before or not repair._screening or repair._keep < repair.keep:
            return False
        return repair.best > 0 and self(repair, seqs)

    def settle(self, repair: Any, seqs: list[list[int]]) -> None:
        """At the end of `repair`'s run (the deadline may end it between a kick and the next stall): the least-misfit
        stalled batch of this run, where it is below where the repair stands."""
        if self.began == repair._began:
            self._restore(repair, seqs)

    def __call__(self, repair: Any, seqs: list[list[int]]) -> bool:
        """At a stall: remember the batch (the least misfit), kick it on the [CLS] spans, or restore the least."""
        if self.began != repair._began:  # a new run of the same repair (the race's second start): start afresh
            self._fresh(repair._began)
        key = tuple(tuple(s) for s in seqs)
        if self.best is None or repair.best < self.best[0]:
            self.best = (repair.best, [list(s) for s in seqs])
        if key in self.seen or budget_now() >= repair._deadline:
            return self._restore(repair, seqs)
        self.seen.add(key)
        options = options_by_length(repair, seqs)
        got, _ = self.spans.descend(seqs, options, repair.cover, repair._deadline, sweeps=self.sweeps, relocate=False)
        if got == seqs or budget_now() >= repair._deadline:
            return self._restore(repair, seqs)
        before = repair.best
        _restart(repair, seqs, got)
        self.stalls.append([before, repair.best])
        return True

    def _restore(self, repair: Any, seqs: list[list[int]]) -> bool:
        """The full sweeps start from the least-misfit stalled batch of this run (where the repair stands if that)."""
        if self.best is not None and self.best[0] < repair.best:
            _restart(repair, seqs, self.best[1])
            self.stalls.append([self.best[0], "restored"])
        return False

    def report(self) -> dict[str, Any]:
        """Per kick, the box misfit at the stall and after the [CLS] descent; "restored" where the full sweeps went
        on from an earlier stall."""
        return {"sweeps": self.sweeps, "kicks": sum(isinstance(s[1], float) for s in self.stalls),
                "stalls": self.stalls, **({"at": self.at} if self.at != "stall" else {})}


@contextmanager
def traded_kick_off(repair: Any, race: bool) -> Iterator[None]:
    """Within the block, no kick (`repair.kick` None) where `race` (the race's traded start, `cls_lengths="race"`,
    `update_small_lr.repair_guess`) and the kick is `at` "block"; restored on the way out, an exception's included.
    Why: the race repairs the untraded start only where the traded start's repair stops before the deadline, and a
    kick keeps it from stopping (SST-2 dev 1 at lr 1e-5, session 42's lead pair: 5 kicks in the traded start, the
    untraded start, the defaults' 3 of 4 exact, never repaired); so the kick acts in the run that goes on."""
    kick = repair.kick
    if race and kick is not None and kick.at == "block":
        repair.kick = None
    try:
        yield
    finally:
        repair.kick = kick


def _restart(repair: Any, seqs: list[list[int]], new: list[list[int]]) -> None:
    """The repair's descent moved to the batch `new` (into `seqs`, in place): its sentences' gradients and misfit made
    afresh (`BoxRepair.begin`), its changes, start time and deadline kept."""
    changes, began, deadline = repair._changes, repair._began, repair._deadline
    seqs[:] = [list(s) for s in new]
    repair.begin(seqs, repair._labels, deadline)
    repair._changes, repair._began = changes, began
