"""Stopping long work at a safe point: Ctrl-C (SIGINT) and SIGTERM alike.

`deferred_stop()` is for loops that checkpoint: inside it the first SIGINT or SIGTERM only sets
`stop.requested` (and says so on stderr); the loop checks it where its state is consistent (the
end of a step), saves, and stops. A second signal stops at once, as usual. Outside the main
thread Python cannot catch signals, and the block changes nothing.

`Terminated` is the KeyboardInterrupt that SIGTERM raises where a program asked for it
(`sigterm_as_interrupt()`, used by the CLI), so every `except KeyboardInterrupt` that saves work
also saves it on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """Raised for SIGTERM where `sigterm_as_interrupt` or `deferred_stop` is in force."""


def signal_name(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"


def _raise_for(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (a KeyboardInterrupt) instead of killing."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _raise_for(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequest:
    """What `deferred_stop` hands the loop: whether, and by which signal, a stop was asked."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupt(self) -> KeyboardInterrupt:
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def deferred_stop(note: str = "stopping at the end of the current step") -> Iterator[StopRequest]:
    stop = StopRequest()
    if not _main_thread():
        yield stop
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def handler(signum, frame) -> None:
        if stop.requested:  # asked twice: stop now
            restore()
            _raise_for(signum)
        stop.signum = signum
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"textleak: {name}: {note} (again to stop at once)", file=sys.stderr, flush=True)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        restore()
