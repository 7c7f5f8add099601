"""What to probe: the probes a verification runs, chosen from the mappings and the holes.

Every mapped page gets read / write / fetch probes at CPL3 and CPL0 at fixed offsets (so a page's
tag, fetch stub and write target never overlap); huge pages are probed at their first and last
4 KiB. Large layouts get that full set on every table's first page, every run's first and last
page, every huge page and a seeded sample, and a CPL3 read of every other page; the plan says
so in its `Coverage`. Holes next to every run (unmapped pages) are probed too: they must fault.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kvmpage.addr import _sign_extend_47
from kvmpage.layout.dump import Run, coalesce
from kvmpage.layout.scan import Leaf
from kvmpage.paging.access import AccessKind

READ_OFFSET = 0x0  #: where a read probe looks: the frame's tag
WRITE_OFFSET = 0x8  #: where a write probe writes (its own tag: memory stays as it was)
FETCH_OFFSET = 0x40  #: where a fetch probe jumps: the frame's fetch stub
TAG_PREFIX = 0x6B70 << 48


def tag(phys: int) -> int:
    """The value kvmpage stores at physical ``phys``: it names the frame a read reached."""
    return TAG_PREFIX | phys


ACCESS_OFFSETS = {
    AccessKind.READ: READ_OFFSET,
    AccessKind.WRITE: WRITE_OFFSET,
    AccessKind.FETCH: FETCH_OFFSET,
}
FULL_SET = tuple((a, cpl) for cpl in (3, 0) for a in AccessKind)


class Probe(NamedTuple):
    """One access: where, what, at which CPL, and the mapping it targets (None for a hole)."""

    va: int
    access: AccessKind
    cpl: int
    leaf: Leaf | None

    def describe(self) -> str:
        return f"{self.access.value}@cpl{self.cpl} {self.va:#x}"


@dataclass(frozen=True)
class PlanOptions:
    """How much to probe."""

    #: layouts with at most this many pages get the full probe set on every page
    full_limit: int = 2048
    #: pages drawn at random for the full set in larger layouts
    sample: int = 256
    #: seed of that sample (printed in the report, so a run can be repeated)
    seed: int = 0
    #: in larger layouts, a CPL3 read of every page not otherwise fully probed
    every_page: bool = True
    #: probe the holes next to each run
    holes: bool = True
    #: probe at CPL0 too (emulated, so about a thousand times slower on a PVM host)
    cpl0: bool = True
    #: more addresses to probe (full set), mapped or not: e.g. a page just unmapped
    extra: tuple[int, ...] = ()


@dataclass
class Coverage:
    """What the plan covers, in words and numbers."""

    pages: int = 0
    pages_full: int = 0
    pages_read_only: int = 0
    holes: int = 0
    extra: int = 0
    strategy: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count a probe left out, by reason."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass
class Plan:
    """The probes, in the order they run, then the bulk pages.

    ``bulk`` (only with ``make_plan(..., bulk=True)``) holds the pages of a large layout that get
    just a CPL3 read at their first byte; the verifier handles them column-wise, without a
    `Probe` each.
    """

    probes: list[Probe]
    coverage: Coverage
    bulk: list[Leaf] = field(default_factory=list)


def _points(leaf: Leaf) -> Sequence[int]:
    """Base addresses probed inside a page: its first 4 KiB, and its last for a huge page."""
    if leaf.size == 4096:
        return (leaf.virt,)
    return (leaf.virt, leaf.virt + leaf.size - 4096)


def _full(leaf: Leaf, options: PlanOptions) -> list[Probe]:
    return [
        Probe(base + ACCESS_OFFSETS[access], access, cpl, leaf)
        for base in _points(leaf)
        for access, cpl in FULL_SET
        if cpl == 3 or options.cpl0
    ]


def make_plan(
    leaves: Sequence[Leaf],
    options: PlanOptions = PlanOptions(),
    *,
    excluded_p4: Iterable[int] = (),
    bulk: bool = False,
) -> Plan:
    """The probes for ``leaves`` (ascending virtual order, as `kvmpage.layout.scan` yields).

    With ``bulk``, the pages that only get a CPL3 read go to `Plan.bulk` instead of becoming
    probes.
    """
    cov = Coverage(pages=len(leaves))
    runs = list(coalesce(leaves))
    if len(leaves) <= options.full_limit:
        full = set(range(len(leaves)))
        cov.strategy = "every page: read, write and fetch at CPL3 and CPL0"
    else:
        full = _chosen(leaves, runs, options)
        cov.strategy = (
            f"{len(full)} pages fully (every table's first page, each run's first and last, "
            f"every huge page, {options.sample} sampled with seed {options.seed})"
            + ("; a CPL3 read of every other page" if options.every_page else "")
        )
    probes: list[Probe] = []
    pages: list[Leaf] = []
    read, make = AccessKind.READ, tuple.__new__  # (a plain tuple.__new__: large plans)
    for i, leaf in enumerate(leaves):
        if i in full:
            probes.extend(_full(leaf, options))
        elif options.every_page:
            if bulk:
                pages.append(leaf)
            else:
                probes.append(make(Probe, (leaf.virt + READ_OFFSET, read, 3, leaf)))
    cov.pages_full = len(full)
    cov.pages_read_only = len(leaves) - len(full) if options.every_page else 0
    if options.extra:
        starts = [leaf.virt for leaf in leaves]
        for va in options.extra:
            i = bisect.bisect_right(starts, va) - 1
            owner = leaves[i] if i >= 0 and va < leaves[i].virt + leaves[i].size else None
            base = va & ~0xFFF
            cov.extra += 1
            probes.extend(
                Probe(base + ACCESS_OFFSETS[a], a, cpl, owner)
                for a, cpl in FULL_SET
                if cpl == 3 or options.cpl0
            )
    if options.holes:
        for va in _holes(leaves, runs, frozenset(excluded_p4)):
            cov.holes += 1
            probes.extend(
                Probe(va + ACCESS_OFFSETS[a], a, cpl, None)
                for a, cpl in FULL_SET
                if cpl == 3 or options.cpl0
            )
    if not options.cpl0:
        cov.strategy += " (CPL3 only)"
    return Plan(probes, cov, pages)


def _chosen(leaves: Sequence[Leaf], runs: Sequence[Run], options: PlanOptions) -> set[int]:
    """Indices of the pages that get the full set in a large layout."""
    chosen: set[int] = set()
    seen_tables: set[int] = set()
    for i, leaf in enumerate(leaves):
        table = leaf.entry_addr & ~0xFFF
        if table not in seen_tables:
            seen_tables.add(table)
            chosen.add(i)
        if leaf.size > 4096:
            chosen.add(i)
    first = 0
    for run in runs:  # the runs cover the leaves in order, run.count leaves each
        chosen.add(first)
        first += run.count
        chosen.add(first - 1)
    rng = random.Random(options.seed)
    chosen.update(rng.sample(range(len(leaves)), min(options.sample, len(leaves))))
    return chosen


def _holes(leaves: Sequence[Leaf], runs: Sequence[Run], excluded_p4: frozenset[int]) -> list[int]:
    """Unmapped 4 KiB pages right before and after each run of mappings."""
    starts = [leaf.virt for leaf in leaves]
    ends = [leaf.virt + leaf.size for leaf in leaves]

    def mapped(va: int) -> bool:
        i = bisect.bisect_right(starts, va) - 1
        return i >= 0 and va < ends[i]

    holes: list[int] = []
    for run in runs:
        for va in (run.virt - 4096, run.virt_end):
            if not 0 <= va < 1 << 64:
                continue
            if _sign_extend_47(va) != va or (va >> 39) & 511 in excluded_p4:
                continue  # non-canonical (#GP, not a hole) or a reserved slot
            if not mapped(va):
                holes.append(va)
    return sorted(set(holes))
