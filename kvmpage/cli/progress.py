"""A one-line progress display on stderr for commands that take more than a second."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from kvmpage.cli.guard import printable


@dataclass
class Progress:
    """A one-line status on stderr, shown only when a run takes longer than ``delay`` seconds,
    only on a terminal, and never with ``--quiet``; the line is erased when the run ends."""

    enabled: bool
    delay: float = 1.0
    stream: TextIO | None = None

    def __post_init__(self) -> None:
        self._text = ""
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    @classmethod
    def for_args(cls, quiet: bool) -> Progress:
        return cls(enabled=not quiet and sys.stderr.isatty())

    def stage(self, text: str) -> None:
        """Say what is happening now (control characters escaped: paths come from users)."""
        self._text = printable(text)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="kvmpage-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            self._out().write("\r\033[K")
            self._out().flush()

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _loop(self) -> None:
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._start
            self._out().write(f"\r\033[K{self._text} ({elapsed:.1f} s)")
            self._out().flush()
            self._shown = True
            self._stop.wait(0.1)
