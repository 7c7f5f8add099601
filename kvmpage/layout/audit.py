"""W+X audit of a layout's runs, including across aliases.

Linux's DEBUG_WX looks at one virtual address at a time. A frame that is writable through one
address and executable through another is just as dangerous (write code there, jump to the
other address), so the audit also compares physical ranges: sorted by physical start, each
writable run is checked against the executable runs it overlaps.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvmpage.layout.dump import Run


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``kind`` is ``"w+x"`` (one address) or ``"w+x-alias"`` (two addresses).

    ``virt`` is where the shared physical range ``[phys, phys_end)`` is writable, ``other_virt``
    where it is executable (the same address for ``"w+x"``).
    """

    kind: str
    phys: int
    phys_end: int
    virt: int  #: where the range is writable
    other_virt: int  #: where it is executable
    message: str


def audit(runs: Sequence[Run]) -> list[Finding]:
    """Every W+X run and every pair of runs, one writable, one executable, sharing frames."""
    findings: list[Finding] = []
    for r in runs:
        if r.rights.writable and r.rights.executable:
            findings.append(
                Finding(
                    "w+x",
                    r.phys,
                    r.phys + r.size,
                    r.virt,
                    r.virt,
                    f"{r.virt:#x}-{r.virt_end - 1:#x} is writable and executable ({r.rights})",
                )
            )
    findings += _aliases(
        runs,
        lambda r: r.rights.writable,
        lambda r: r.rights.executable,
        "w+x-alias",
        "writable through {a} ({ar}) and executable through {b} ({br})",
    )
    return findings


def _aliases(
    runs: Sequence[Run],
    first: Callable[[Run], bool],
    second: Callable[[Run], bool],
    kind: str,
    template: str,
) -> list[Finding]:
    """Pairs of different runs, one with ``first``, one with ``second``, sharing frames."""
    targets = sorted((r for r in runs if second(r)), key=lambda r: r.phys)
    starts = [r.phys for r in targets]
    # a run cannot be longer than the longest target: bound the backwards search
    longest = max((r.size for r in targets), default=0)
    out: list[Finding] = []
    for a in runs:
        if not first(a):
            continue
        lo = bisect.bisect_left(starts, a.phys - longest)
        hi = bisect.bisect_left(starts, a.phys + a.size)
        for b in targets[lo:hi]:
            if b is a or b.virt == a.virt:
                continue
            start = max(a.phys, b.phys)
            end = min(a.phys + a.size, b.phys + b.size)
            if start >= end:
                continue
            va = a.virt + (start - a.phys)
            vb = b.virt + (start - b.phys)
            where_a = f"{va:#x}-{va + end - start - 1:#x}"
            where_b = f"{vb:#x}-{vb + end - start - 1:#x}"
            text = template.format(a=where_a, ar=a.rights, b=where_b, br=b.rights)
            out.append(
                Finding(kind, start, end, va, vb, f"physical {start:#x}-{end - 1:#x} {text}")
            )
    return out
