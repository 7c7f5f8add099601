"""Differences between two layouts' runs: ranges added, removed, or changed in what they map.

Both sides are cut at every run boundary of either side, each piece is compared by what the
CPU would see there (physical address, page level, leaf flags without A/D, effective rights),
and neighbouring pieces with the same change between the same two runs are merged again.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from kvmpage.layout.dump import Run, flag_names, human_size

_AD = 0x60
LEVEL_NAME = {1: "4K", 2: "2M", 3: "1G"}


@dataclass(frozen=True, slots=True)
class Change:
    """``[virt, virt_end)`` is ``"added"`` (only in the new layout), ``"removed"`` or
    ``"changed"``; ``fields`` says what changed (``phys``, ``level``, ``flags``, ``rights``)."""

    kind: str
    virt: int
    virt_end: int
    old: Run | None
    new: Run | None
    fields: tuple[str, ...]

    def describe_side(self, run: Run | None) -> str:
        """Physical address, level, rights and flags of one side at ``virt``."""
        if run is None:
            return "unmapped"
        phys = run.phys + (self.virt - run.virt)
        return f"{phys:#x} {LEVEL_NAME[run.level]} {run.rights} [{flag_names(run.flags)}]"


def diff(old: Sequence[Run], new: Sequence[Run]) -> list[Change]:
    """The changes from ``old`` to ``new`` (both in ascending virtual order)."""
    cuts = sorted({r.virt for r in (*old, *new)} | {r.virt_end for r in (*old, *new)})
    old_starts = [r.virt for r in old]
    new_starts = [r.virt for r in new]
    changes: list[Change] = []
    for start, end in itertools.pairwise(cuts):
        a = _covering(old, old_starts, start)
        b = _covering(new, new_starts, start)
        if a is None and b is None:
            continue
        fields: tuple[str, ...] = ()
        if a is None:
            kind = "added"
        elif b is None:
            kind = "removed"
        else:
            fields = _fields(a, b, start)
            if not fields:
                continue
            kind = "changed"
        last = changes[-1] if changes else None
        if (
            last is not None
            and last.virt_end == start
            and last.kind == kind
            and last.fields == fields
            and last.old is a
            and last.new is b
        ):
            changes[-1] = Change(kind, last.virt, end, a, b, fields)
        else:
            changes.append(Change(kind, start, end, a, b, fields))
    return changes


def _covering(runs: Sequence[Run], starts: list[int], va: int) -> Run | None:
    i = bisect.bisect_right(starts, va) - 1
    if i >= 0 and va < runs[i].virt_end:
        return runs[i]
    return None


def _fields(a: Run, b: Run, va: int) -> tuple[str, ...]:
    out = []
    if a.phys + (va - a.virt) != b.phys + (va - b.virt):
        out.append("phys")
    if a.level != b.level:
        out.append("level")
    if (a.flags ^ b.flags) & ~_AD & ~0x80:
        out.append("flags")
    if a.rights != b.rights:
        out.append("rights")
    return tuple(out)


def format_diff(changes: Sequence[Change], old_name: str, new_name: str) -> list[str]:
    """A unified-diff-like listing: ``-`` removed, ``+`` added, ``~`` changed (old -> new)."""
    lines = [f"--- {old_name}", f"+++ {new_name}"]
    for c in changes:
        head = f"{c.virt:#018x}-{c.virt_end - 1:#018x} {human_size(c.virt_end - c.virt):>6}"
        if c.kind == "added":
            lines.append(f"+ {head}  {c.describe_side(c.new)}")
        elif c.kind == "removed":
            lines.append(f"- {head}  {c.describe_side(c.old)}")
        else:
            lines.append(
                f"~ {head}  {', '.join(c.fields)}: {c.describe_side(c.old)} -> "
                f"{c.describe_side(c.new)}"
            )
    if not changes:
        lines.append("  (no differences)")
    return lines
