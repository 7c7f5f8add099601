"""Command-line values, checked where they are parsed: every number has a range.

Each function here is an argparse ``type=``: it returns the value or raises
``argparse.ArgumentTypeError`` with what was expected, which `Parser` turns into one line
and exit status 2 (or the JSON error document with ``--json``). A negative count, a zero, NaN
or infinity never reach a command: a run that could make no probe must not look like a pass.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

#: Seeds are unsigned 32-bit numbers, as the random ones kvmpage picks itself (exact in JSON).
SEED_MAX = (1 << 32) - 1
#: The longest campaign ``kvmpage fuzz --seconds`` accepts: a year.
SECONDS_MAX = 366 * 24 * 3600.0


def _integer(text: str, what: str) -> int:
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def integer(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An integer in ``[low, high]`` (decimal, or 0x... hex)."""
    if not what:
        what = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        value = _integer(text, what)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def seconds(text: str) -> float:
    """A finite, positive number of seconds, at most `SECONDS_MAX`."""
    what = f"a number of seconds above 0 and at most {SECONDS_MAX:.0f}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= SECONDS_MAX:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


seed = integer(0, SEED_MAX, f"a seed from 0 to {SEED_MAX} (2**32 - 1)")


class UsageError(Exception):
    """A command line argparse refused; ``prog`` is the (sub)command's name."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become `UsageError` (one line, exit 2, JSON with
    ``--json``) instead of a usage block printed by argparse itself."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)
