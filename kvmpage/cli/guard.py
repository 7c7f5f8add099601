"""What keeps a ``kvmpage`` command honest at its edges: signals, output errors, and text
that came from a file.

- **Signals.** `signal_handlers` turns SIGINT, SIGTERM and SIGHUP into `Interrupted` (a
  ``KeyboardInterrupt``), so every ``with`` block on the way out runs and releases its machine
  (the KVM handles hold the signals while they close, `kvmpage.kvm.signals`). The command then
  prints one line and exits with 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129
  for SIGHUP, as a shell reports a process the signal killed. Before ``main`` runs, the console
  script has `kvmpage._early` handle them the same way.
- **Output.** `guarded_output` puts a thin wrapper on stdout that turns a failed write into
  `OutputError` (not an ``OSError``, so it cannot pass for a KVM or a file problem), and one on
  stderr that drops failed writes: a message for people has nowhere else to go. A reader that
  went away (``| head -1``) is exit status `EXIT_BROKEN_PIPE` (141, what a shell reports for a
  tool SIGPIPE killed); any other failed write (``> /dev/full``) is 2 with one line on stderr.
- **Text from files.** `printable` escapes control characters (``\\r``, ``\\n``, ANSI
  escapes, Unicode line separators and bidirectional overrides) in names and paths before they
  are printed, so a layout file cannot forge lines of the output.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
import threading
import unicodedata
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

#: Exit status when the reader of stdout went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
HANDLED_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WORDS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hung up",
}


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop; ``exit_status`` is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"{_WORDS.get(self.signum, 'stopped')} ({signal.Signals(self.signum).name})"


class OutputError(Exception):
    """Writing the command's output failed; ``error`` is the ``OSError``."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error

    @property
    def broken_pipe(self) -> bool:
        return self.error.errno in (errno.EPIPE, errno.ECONNRESET)

    def __str__(self) -> str:
        return f"cannot write the output: {self.error.strerror or self.error}"


class SignalState:
    """What `signal_handlers` saw: the signals received, and whether the command already
    said it was stopped (``reported``)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.received: list[int] = []
        self.reported = False

    def report(self, signum: int) -> str:
        """The one line, printed once."""
        line = f"kvmpage{f' {self.command}' if self.command else ''}: {Interrupted(signum)}"
        if not self.reported:
            self.reported = True
            say(line)
        return line


@contextlib.contextmanager
def signal_handlers(command: str = "") -> Iterator[SignalState]:
    """Raise `Interrupted` for the first SIGINT, SIGTERM or SIGHUP inside the block; a second
    one, while the first is still on its way out (closing the machine, flushing the output),
    ends the process at once with the same kind of status, as a second Ctrl-C does elsewhere.

    The previous handlers come back when the block ends. Nothing changes outside the main
    thread (Python runs handlers only there) or for a signal that was ignored on entry (a
    background job's SIGINT, ``nohup``'s SIGHUP): that choice belongs to whoever started us.
    """
    state = SignalState(command)

    def handler(signum: int, frame: FrameType | None) -> None:
        state.received.append(signum)
        if len(state.received) > 1:
            state.report(state.received[0])
            os._exit(128 + state.received[0])
        raise Interrupted(signum)

    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in HANDLED_SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue
            saved[signum] = previous
            signal.signal(signum, handler)
    try:
        yield state
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


class _Stdout:
    """stdout, with failed writes raised as `OutputError`."""

    def __init__(self, stream: TextIO | io.TextIOBase) -> None:
        self._stream = stream
        #: Whether anything was written (a JSON document must not follow half of another).
        self.started = False

    def write(self, text: str) -> int:
        self.started = True
        try:
            return self._stream.write(text)
        except OSError as e:
            raise OutputError(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputError(e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Stderr:
    """stderr, where a failed write is dropped: messages for people have nowhere else to go."""

    def __init__(self, stream: TextIO | io.TextIOBase) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Closed(io.TextIOBase):
    """What stands for a standard stream the process was started without (``>&-``): writing
    fails as writing to a closed descriptor does."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "the stream is closed (the command was started without it)")

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def guarded_output() -> Iterator[_Stdout]:
    """Put the `_Stdout` and `_Stderr` wrappers in place for the block (restored after)."""
    out, err = sys.stdout, sys.stderr
    guarded = _Stdout(out if out is not None else _Closed())
    sys.stdout = guarded
    sys.stderr = _Stderr(err if err is not None else _Closed())
    try:
        yield guarded
    finally:
        sys.stdout, sys.stderr = out, err


def discard_stdout() -> None:
    """After a failed write: drop what stdout still buffers, so that the interpreter's last
    flush at exit neither fails again nor prints "Exception ignored"."""
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture): nothing is flushed at exit
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def say(line: str) -> None:
    """One line for people on stderr; never fails."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=sys.stderr, flush=True)


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ``\\u2028``...).

    Backslashes are doubled only when something had to be escaped, so ordinary names and
    paths print as they are and an escaped one still reads unambiguously.
    """
    if text.isprintable() or all(_escape(ch) == ch for ch in text if ch != "\\"):
        return text
    return "".join(_escape(ch) for ch in text)
