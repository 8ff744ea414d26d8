"""Pacing a sweep (an audit) against a wall-time budget, and telling the user how far it is.

`Pacer(total=300, per_unit=60, units=15)` hands each unit a share of the time left: the
remaining seconds divided by the units still to run (at most `per_unit`), recomputed before
every unit, so a unit that finishes early (exact recovery takes seconds) leaves its time to the
units after it, and the whole run ends near `total` (what a unit costs outside its budget, its
capture and scoring, is estimated by the quickest unit so far and reserved). `Pacer.runner(run_unit)` runs each unit
under its share (`core.budget.time_budget`) and records `budget` ({"seconds", "used",
"ran_out"}) in the unit's record; `Pacer.say` prints one line per finished unit with the
elapsed time and an ETA.

A unit whose budget ran out returns its best guess so far: its recovery is a lower bound on what
leaks, and the report says so. Accuracy runs (units of kind "utility") are not cut by the clock:
a fine-tune stopped early would misstate what a defence costs. They are bounded by their size
(`--utility-train` sentences) and run first, so the attacks share what they leave.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from .core.budget import time_budget
from .errors import InputError

Runner = Callable[..., dict[str, Any]]


def clock(seconds: float) -> str:
    """1:02:03 / 4:05 for a number of seconds."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _positive(name: str, value: float | None) -> float | None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


class Pacer:
    """Shares of a total budget per unit, and progress lines with an ETA.

    total: seconds for the whole run (None: no limit). per_unit: cap per unit (None: no cap).
    units: how many units this run will execute. say: where progress lines go (None: silent).
    """

    def __init__(self, *, total: float | None, per_unit: float | None, units: int,
                 say: Callable[[str], None] | None = print, now: Callable[[], float] = time.monotonic):
        self.total = _positive("the budget", total)
        self.per_unit = _positive("the per-unit budget", per_unit)
        self.units = units
        self.done = 0
        self.fastest: float | None = None  # the quickest budgeted unit so far: its cost beyond its budget
        self._budgeted = True  # whether the unit running now has a budget
        self._last = None
        self._say = say
        self._now = now
        self.start = now()
        self._last = self.start

    def elapsed(self) -> float:
        return self._now() - self.start

    def remaining(self) -> float:
        return math.inf if self.total is None else max(0.0, self.total - self.elapsed())

    def share(self) -> float | None:
        """Seconds for the next unit (None: unlimited): the time left over the units left, less
        what the quickest unit so far took (loading, capture and scoring run outside any budget);
        never below a tenth of a second, so a unit started after the deadline still returns a
        first guess instead of failing."""
        left = max(1, self.units - self.done)
        share = self.remaining() / left - (self.fastest or 0.0)
        if self.per_unit is not None:
            share = min(share, self.per_unit)
        return None if math.isinf(share) else max(share, 0.1)

    def eta(self) -> float | None:
        """Seconds until the last unit ends: the mean unit time so far times the units left, but no
        more than the budget left plus what the quickest unit took for each unit left (loading,
        capture and scoring run whatever the budget)."""
        left = max(0, self.units - self.done)
        if self.done == 0:
            return None if self.total is None else self.remaining()
        guess = self.elapsed() / self.done * left
        if self.total is None:
            return guess
        return min(guess, self.remaining() + left * (self.fastest or 0.0))

    def runner(self, inner: Runner) -> Runner:
        """`inner` run under this unit's share of the budget, its record stamped with the budget
        (a sweep unit of kind "utility", the second argument, runs without a limit)."""
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            unit = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            budgeted = unit.get("kind") != "utility"
            self._budgeted = budgeted
            with time_budget(self.share() if budgeted else None) as limit:
                record = inner(*args, **kwargs)
                record.setdefault("budget", limit.describe())
            return record
        return run

    def say(self, message: str) -> None:
        """Called once per finished unit (the sweep's progress callback)."""
        self.done += 1
        now = self._now()
        took, self._last = now - self._last, now
        if self._budgeted:  # what a budgeted unit costs beyond its share
            self.fastest = took if self.fastest is None else min(self.fastest, took)
        if self._say is None:
            return
        eta = self.eta()
        self._say(f"{message}  elapsed {clock(self.elapsed())}" + ("" if eta is None else f"  ETA {clock(eta)}"))

    def describe(self) -> str:
        limits = []
        if self.total is not None:
            limits.append(f"{clock(self.total)} in all")
        if self.per_unit is not None:
            limits.append(f"at most {clock(self.per_unit)} per unit")
        return "budget: " + (", ".join(limits) if limits else "none")


def fixed_share(inner: Runner, seconds: float | None) -> Runner:
    """`inner` under a fixed per-unit budget (for backends whose units run in other processes,
    where a shared clock cannot be read)."""
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with time_budget(seconds) as limit:
            record = inner(*args, **kwargs)
            record.setdefault("budget", limit.describe())
        return record
    return run
