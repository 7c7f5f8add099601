"""The exit codes every command shares and the error that stops a command.

Exit codes are the contract CI relies on: `EXIT_OK` when the check passed, `EXIT_FAIL` when it
ran and found something (a disagreement, an audit finding with ``--strict``, a difference), and
`EXIT_ERROR` when it could not run (a bad layout file, no /dev/kvm...), with the reason.
"""

from __future__ import annotations

__all__ = ["EXIT_ERROR", "EXIT_FAIL", "EXIT_OK", "CliError"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


class CliError(Exception):
    """A reason the command could not run (exit status 2); the message is shown as it is."""
