"""Wall-time budgets: long work (an attack, a sweep unit, an audit) runs against a deadline and,
when it passes, stops at its next safe point and returns its best result so far, marked as such.

Budgets nest: `with time_budget(60):` inside `with time_budget(300):` ends at whichever deadline
comes first. Code that searches asks `current()` (or `expired()`) at the points where it can stop
cleanly (a search round, an optimiser step) and records `current().describe()` in its result, so
a reader sees whether the budget cut the work short. Nothing here knows about text or images.

The clock is wall time (time.monotonic). A benchmark on a shared machine may count the process'
CPU seconds instead (`TEXTLEAK_BUDGET_CLOCK=cpu`, time.process_time; the recipes' `--budget-clock
cpu`), so that two arms run side by side under load get the same work, not the same wall time; the
result's `budget` record then says `"clock": "cpu"`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import InputError

CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


def clock_name() -> str:
    """The budget clock in use: `TEXTLEAK_BUDGET_CLOCK` (wall, the default, or cpu)."""
    name = os.environ.get("TEXTLEAK_BUDGET_CLOCK", "wall").strip().lower() or "wall"
    if name not in CLOCKS:
        raise InputError(f"TEXTLEAK_BUDGET_CLOCK must be one of {', '.join(CLOCKS)}, got {name!r}")
    return name


def now() -> float:
    """Seconds on the budget clock (only differences mean anything)."""
    return CLOCKS[clock_name()]()


@dataclass
class Budget:
    """A deadline `seconds` after `start` (on the budget clock, `now()`); seconds None means no limit."""

    seconds: float | None = None
    start: float = field(default_factory=now)
    parent: "Budget | None" = field(default=None, repr=False)
    ran_out: bool = False

    def __post_init__(self) -> None:
        if self.seconds is not None and not (isinstance(self.seconds, (int, float))
                                             and math.isfinite(self.seconds) and self.seconds > 0):
            raise InputError(f"a time budget must be a positive number of seconds, got {self.seconds!r}")

    @property
    def deadline(self) -> float:
        own = math.inf if self.seconds is None else self.start + self.seconds
        return min(own, self.parent.deadline) if self.parent is not None else own

    def remaining(self) -> float:
        """Seconds left (math.inf without a limit), never negative."""
        return max(0.0, self.deadline - now())

    def elapsed(self) -> float:
        return now() - self.start

    def expired(self) -> bool:
        """True once the deadline (own or an enclosing one) has passed; remembered in `ran_out`."""
        if now() >= self.deadline:
            self.ran_out = True
            if self.parent is not None:
                self.parent.expired()
        return self.ran_out

    def describe(self) -> dict[str, Any]:
        """What a result records: the limit, the time used, and whether the limit cut it short."""
        limit = None if math.isinf(self.deadline) else round(self.deadline - self.start, 3)
        out = {"seconds": limit, "used": round(self.elapsed(), 3), "ran_out": self.ran_out}
        if clock_name() != "wall":
            out["clock"] = clock_name()
        return out


def _outer() -> Budget:
    """The budget without a limit that holds when none was set. An unknown clock is refused where a budget is
    first asked (inside a command, whose error is one line), not when the module is imported."""
    try:
        return Budget()
    except InputError:
        return Budget(start=time.monotonic())


_CURRENT: contextvars.ContextVar[Budget] = contextvars.ContextVar("textleak_budget", default=_outer())


def current() -> Budget:
    """The innermost active budget (one without a limit when none was set)."""
    return _CURRENT.get()


def expired() -> bool:
    return current().expired()


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[Budget]:
    """Run a block under a budget of `seconds` (None: only the enclosing budgets apply)."""
    budget = Budget(seconds, parent=_CURRENT.get())
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def share_of_remaining(fraction: float) -> float | None:
    """Seconds for a stage that may take `fraction` of what the enclosing budgets leave: None
    without a limit (or a fraction of 1 or more); never zero, so a stage started after the
    deadline still gets a budget, finds it spent at its first check and returns its best so far."""
    left = current().remaining()
    if not math.isfinite(left) or fraction >= 1:
        return None
    return max(left * fraction, 1e-3)

