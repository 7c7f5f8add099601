"""Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP while a handle is being created or released.

A Python signal handler runs between any two bytecodes, so a ``KeyboardInterrupt`` can land
between ``os.open`` returning a descriptor and the handle that owns it being built, or in the
middle of a ``close`` that has released half of what it holds: either leaks a descriptor or a
mapping. `signals_deferred` makes those few lines atomic: inside it, the Python-level handlers
of those signals only record the signal, and when the block ends the original handlers
are put back and run for each recorded signal, so the ``KeyboardInterrupt`` (or whatever the
handler does) happens right after the block, with everything released or owned.

Only Python-level handlers can be deferred (a signal left at its default action ends the
process in the kernel, which releases everything anyway), and only in the main thread, the only
one where Python runs signal handlers. The swap costs a few microseconds: it is meant for
creating and closing handles, not for hot paths.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

DEFERRED_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with SIGINT, SIGTERM and SIGHUP handled after it, never inside it."""
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    saved: dict[int, Callable[[int, FrameType | None], Any]] = {}
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in DEFERRED_SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler):
                    saved[signum] = handler
                    signal.signal(signum, hold)
    except Exception:  # e.g. the interpreter shutting down: then there is nothing to defer
        _restore(saved)
        saved = {}
    try:
        yield
    finally:
        _restore(saved)
        for signum in pending:
            handler = saved.get(signum)
            if handler is not None:
                handler(signum, None)


def _restore(saved: dict[int, Callable[[int, FrameType | None], Any]]) -> None:
    for signum, handler in saved.items():
        with contextlib.suppress(Exception):
            signal.signal(signum, handler)
