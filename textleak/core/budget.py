"""Wall-time budgets: long work (an attack, a sweep unit, an audit) runs against a deadline and,
when it passes, stops at its next safe point and returns its best result so far, marked as such.

Budgets nest: `with time_budget(60):` inside `with time_budget(300):` ends at whichever deadline
comes first. Code that searches asks `current()` (or `expired()`) at the points where it can stop
cleanly (a search round, an optimiser step) and records `current().describe()` in its result, so
a reader sees whether the budget cut the work short. Nothing here knows about text or images.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import InputError


@dataclass
class Budget:
    """A deadline `seconds` after `start` (time.monotonic); seconds None means no limit."""

    seconds: float | None = None
    start: float = field(default_factory=time.monotonic)
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
        return max(0.0, self.deadline - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        """True once the deadline (own or an enclosing one) has passed; remembered in `ran_out`."""
        if time.monotonic() >= self.deadline:
            self.ran_out = True
            if self.parent is not None:
                self.parent.expired()
        return self.ran_out

    def describe(self) -> dict[str, Any]:
        """What a result records: the limit, the time used, and whether the limit cut it short."""
        limit = None if math.isinf(self.deadline) else round(self.deadline - self.start, 3)
        return {"seconds": limit, "used": round(self.elapsed(), 3), "ran_out": self.ran_out}


_CURRENT: contextvars.ContextVar[Budget] = contextvars.ContextVar("textleak_budget", default=Budget())


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

