"""A watchdog that ends a KVM_RUN which takes too long.

KVM_RUN releases the GIL, so a helper thread can watch the clock. When a deadline passes it sets
the vCPU's ``immediate_exit`` flag (so a KVM_RUN that has not started yet returns at once) and
sends a signal to the thread inside KVM_RUN, which makes the ioctl return with EINTR; it repeats
the kick every few milliseconds until the run is disarmed, so no race can lose it. One daemon
thread serves every machine in the process.

The signal is ``SIGRTMIN + 3`` with a do-nothing handler, installed the first time a watchdog is
armed from the main thread (Python only lets the main thread install handlers).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

KICK_SIGNAL = signal.SIGRTMIN + 3
KICK_REPEAT = 0.005


def _ignore(signum: int, frame: object) -> None:
    """The kick only needs to interrupt a system call; nothing to do here."""


def install_signal_handler() -> None:
    """Install the no-op handler for `KICK_SIGNAL` (main thread only; idempotent)."""
    if signal.getsignal(KICK_SIGNAL) is _ignore:
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "kvmpage's watchdog needs its signal handler, which only the main thread can install: "
            "create the first Machine in the main thread or call "
            "kvmpage.machine.watchdog.install_signal_handler() there"
        )
    signal.signal(KICK_SIGNAL, _ignore)
    signal.siginterrupt(KICK_SIGNAL, True)


@dataclass(order=True)
class _Arming:
    deadline: float
    ident: int
    thread_id: int = field(compare=False)
    before_kick: Callable[[], None] = field(compare=False)
    fired: bool = field(default=False, compare=False)


class Watchdog:
    """Process-wide watchdog thread. `arm` before each KVM_RUN, `disarm` after.

    Arming and disarming must be cheap (they bracket every batch), so they never wake the
    thread: while runs are frequent it polls every `POLL` seconds, and it only goes to sleep
    (and needs a notify) after `IDLE_AFTER` seconds without any arming.
    """

    POLL = 0.005
    IDLE_AFTER = 1.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, _Arming] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._sleeping = True
        self._last_armed = 0.0

    def arm(self, timeout: float, before_kick: Callable[[], None]) -> _Arming:
        """Watch the calling thread; ``before_kick`` runs (in the watchdog) before each kick."""
        install_signal_handler()
        now = time.monotonic()
        arming = _Arming(now + timeout, next(self._ids), threading.get_ident(), before_kick)
        with self._cond:
            self._armed[arming.ident] = arming
            self._last_armed = now
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="kvmpage-watchdog", daemon=True
                )
                self._sleeping = False
                self._thread.start()
            elif self._sleeping:
                self._sleeping = False
                self._cond.notify()
        return arming

    def disarm(self, arming: _Arming) -> bool:
        """Stop watching; returns whether the watchdog fired."""
        with self._cond:
            self._armed.pop(arming.ident, None)
            return arming.fired

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                for a in [a for a in self._armed.values() if a.deadline <= now]:
                    a.fired = True
                    a.deadline = now + KICK_REPEAT
                    try:
                        a.before_kick()
                        signal.pthread_kill(a.thread_id, KICK_SIGNAL)
                    except (ProcessLookupError, OSError, ValueError):
                        self._armed.pop(a.ident, None)
                if not self._armed and now - self._last_armed > self.IDLE_AFTER:
                    self._sleeping = True
                    while self._sleeping:
                        self._cond.wait()
                else:
                    self._cond.wait(self.POLL)


WATCHDOG = Watchdog()
