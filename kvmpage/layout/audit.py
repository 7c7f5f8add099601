"""Security audit of a set of runs: W+X, also across aliases, and what real kernels get wrong.

Linux's DEBUG_WX looks at one virtual address at a time. A frame that is writable through one
address and executable through another is just as dangerous (write code there, jump to the
other address), so the audit compares physical ranges: sorted by physical start, each run with
the first property is checked against the runs with the second that share frames.

Each finding has a ``kind`` (`KINDS` says what each means):

- ``w+x``: one range both writable and executable;
- ``w+x-alias``: frames writable through one address and executable through another;
- ``user-kernel-half``: a user-accessible mapping in the kernel half of the address space;
- ``table-user-writable`` / ``table-writable``: a page-table page mapped writable by user
  mode / by the kernel (a kernel's direct map usually does the latter on purpose);
- ``user-exec-alias``: a user-accessible frame that the kernel half maps executable (a way to
  run user-controlled bytes at CPL0, what SMEP is meant to stop, through another address);
- ``kpti-user-maps-kernel``: with KPTI, a kernel-half range the user page tables still map.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from kvmpage.layout.dump import Run, human_size

#: What each finding kind means (for ``--help``, docs and JSON readers).
KINDS = {
    "w+x": "writable and executable through one address",
    "w+x-alias": "writable through one address, executable through another",
    "user-kernel-half": "user-accessible mapping in the kernel half of the address space",
    "table-user-writable": "page-table page writable from user mode",
    "table-writable": "page-table page mapped writable (kernel)",
    "user-exec-alias": "user-accessible frame mapped executable in the kernel half",
    "kpti-user-maps-kernel": "kernel-half range the KPTI user page tables still map",
}
KERNEL_HALF = 1 << 63


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem. ``virt`` is where the physical range ``[phys, phys_end)`` has the first
    property (writable, user-accessible...), ``other_virt`` where it has the second (the same
    address for single-range kinds)."""

    kind: str
    phys: int
    phys_end: int
    virt: int
    other_virt: int
    message: str


def audit(runs: Sequence[Run], *, tables: Collection[int] = ()) -> list[Finding]:
    """Every finding of ``runs`` (ascending virtual order). ``tables``: the physical addresses
    of the page-table pages, for the ``table-*`` kinds."""
    findings: list[Finding] = []
    for r in runs:
        if r.rights.writable and r.rights.executable:
            findings.append(_single("w+x", r, f"is writable and executable ({r.rights})"))
    findings += _aliases(
        runs,
        lambda r: r.rights.writable,
        lambda r: r.rights.executable,
        "w+x-alias",
        "writable through {a} ({ar}) and executable through {b} ({br})",
    )
    for r in runs:
        if r.rights.user and r.virt >= KERNEL_HALF:
            findings.append(
                _single(
                    "user-kernel-half", r, f"is user-accessible in the kernel half ({r.rights})"
                )
            )
    if tables:
        findings += _tables(runs, sorted(set(tables)))
    findings += _aliases(
        runs,
        lambda r: r.rights.user,
        lambda r: r.rights.executable and not r.rights.user and r.virt >= KERNEL_HALF,
        "user-exec-alias",
        "user-accessible through {a} ({ar}) and executable by the kernel through {b} ({br})",
    )
    return findings


def kpti_findings(user_runs: Sequence[Run]) -> list[Finding]:
    """``kpti-user-maps-kernel``: what the KPTI *user* page tables map in the kernel half, one
    finding per top-level slot (Linux's entry code, CPU entry area, espfix...)."""
    slots: dict[int, list[Run]] = {}
    for r in user_runs:
        if r.virt >= KERNEL_HALF:
            slots.setdefault((r.virt >> 39) & 511, []).append(r)
    out = []
    for slot, runs in sorted(slots.items()):
        first, last = runs[0], runs[-1]
        pages = sum(r.count for r in runs)
        size = sum(r.size for r in runs)
        rights = ", ".join(sorted({str(r.rights) for r in runs}))
        out.append(
            Finding(
                "kpti-user-maps-kernel",
                first.phys,
                first.phys + first.size,
                first.virt,
                last.virt,
                f"{first.virt:#x}-{last.virt_end - 1:#x}: {pages} page{'s' if pages > 1 else ''} "
                f"({human_size(size)}, {rights}) in {len(runs)} run{'s' if len(runs) > 1 else ''} "
                f"mapped in the user page tables (top-level slot {slot})",
            )
        )
    return out


def _single(kind: str, r: Run, text: str) -> Finding:
    return Finding(
        kind, r.phys, r.phys + r.size, r.virt, r.virt, f"{r.virt:#x}-{r.virt_end - 1:#x} {text}"
    )


def _tables(runs: Sequence[Run], tables: list[int]) -> list[Finding]:
    """Writable runs whose frames include page-table pages, one finding per run."""
    out = []
    for r in runs:
        if not r.rights.writable:
            continue
        lo = bisect.bisect_left(tables, r.phys)
        hi = bisect.bisect_left(tables, r.phys + r.size)
        if hi == lo:
            continue
        n = hi - lo
        kind = "table-user-writable" if r.rights.user else "table-writable"
        who = "user mode" if r.rights.user else "the kernel"
        first = tables[lo]
        out.append(
            Finding(
                kind,
                first,
                tables[hi - 1] + 4096,
                r.virt + (first - r.phys),
                r.virt,
                f"{r.virt:#x}-{r.virt_end - 1:#x} ({r.rights}) maps {n} page-table "
                f"page{'s' if n > 1 else ''} writable by {who} (first: physical {first:#x})",
            )
        )
    return out


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
