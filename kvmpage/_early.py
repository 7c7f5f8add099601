"""The first lines the ``kvmpage`` console script runs: Ctrl-C before ``main`` is one line too.

Importing the command takes a few tens of milliseconds (the interpreter, then kvmpage's
modules) before `kvmpage.cli.main` installs its signal handlers. A SIGINT, SIGTERM or SIGHUP in
that window used to end in a ``KeyboardInterrupt`` traceback from whatever module was being
imported. `kvmpage/__init__.py` calls `stop_on_signals` first thing when the process is the
console script (``sys.argv[0]`` is ``kvmpage``), never when kvmpage is imported as a library:
until ``main`` takes over, a signal prints the command's one line (and the JSON error document
with ``--json``) and exits with 128 + its number at once; nothing is open yet to release.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

#: The JSON schema version of the error document (kvmpage.cli.output.SCHEMA_VERSION; a test
#: keeps them equal without importing the command here).
SCHEMA_VERSION = 2
#: The command words (kvmpage.cli takes its list from here).
COMMANDS = ("verify", "walk", "dump", "host", "image", "fuzz", "matrix")
_WORDS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hung up",
}


def is_console_script() -> bool:
    """Whether this process is the ``kvmpage`` console script starting up."""
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "kvmpage"


def _stop(signum: int, frame: FrameType | None) -> None:
    args = sys.argv[1:]
    command = next((a for a in args if a in COMMANDS), None)
    reason = f"{_WORDS.get(signum, 'stopped')} ({signal.Signals(signum).name})"
    try:
        os.write(2, f"kvmpage{f' {command}' if command else ''}: {reason}\n".encode())
        if "--json" in args:
            name = f'"{command}"' if command else "null"
            doc = (
                f'{{"schema_version": {SCHEMA_VERSION}, "command": {name}, '
                f'"exit_code": {128 + signum}, "error": "{reason}"}}\n'
            )
            os.write(1, doc.encode())
    except OSError:
        pass
    os._exit(128 + signum)


def stop_on_signals() -> None:
    """Until ``main`` installs its own handlers: a signal ends the process with its one line.
    A signal ignored on entry (a background job's SIGINT, nohup's SIGHUP) stays ignored."""
    for signum in _WORDS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)
