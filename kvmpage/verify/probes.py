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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kvmpage.addr import canonicalize
from kvmpage.layout.dump import Run, coalesce, runs_of
from kvmpage.paging.access import AccessKind
from kvmpage.paging.leaves import Leaf, LeafGroup, Leaves
from kvmpage.paging.walk import Rights

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
    #: the sample for a memory image (instead of ``every_page``, in a layout larger than
    #: ``full_limit``): the full set on one page of every distinct (level, leaf flags but
    #: A/D, rights) and on the seeded sample, and a CPL3 read of the first page of every run
    #: and of every user page (``kvmpage verify --image``)
    image_sample: bool = False


#: The six kinds of probe, as `Coverage.probed` names them.
PROBE_KINDS = tuple(f"{access.value}@cpl{cpl}" for access, cpl in FULL_SET)


@dataclass
class Coverage:
    """What the plan covers, in words and numbers; after a run, what was really probed."""

    pages: int = 0
    pages_full: int = 0
    pages_read_only: int = 0
    holes: int = 0
    extra: int = 0
    strategy: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    #: after a run: pages (mapped leaves) probed by each kind of probe (``"write@cpl0"``...),
    #: out of `pages`; a page counts once a probe of that kind ran on it
    probed: dict[str, int] = field(default_factory=dict)
    #: after a run: every page was read, written and fetched at CPL3 and CPL0
    complete: bool = False

    def skip(self, reason: str, count: int = 1) -> None:
        """Count probes left out, by reason."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def count_probed(self, probes: Sequence[Probe], bulk_reads: Sequence[Sequence[int]]) -> None:
        """Fill `probed` and `complete` from the probes that ran and the bulk pages read (the
        first byte of 4 KiB pages, a CPL3 read each)."""
        seen: dict[str, set[int]] = {kind: set() for kind in PROBE_KINDS}
        for p in probes:
            if p.leaf is not None:
                seen[f"{p.access.value}@cpl{p.cpl}"].add(p.leaf.virt)
        self.probed = {kind: len(pages) for kind, pages in seen.items()}
        reads = seen["read@cpl3"] if self.extra else set()  # an extra address may be a bulk page
        for vas in bulk_reads:
            self.probed["read@cpl3"] += len(vas) - len(reads.intersection(vas))
        self.complete = all(n >= self.pages for n in self.probed.values())


class BulkGroup(NamedTuple):
    """Pages of one `LeafGroup` that get only a CPL3 read at their first byte."""

    group: LeafGroup
    indices: list[int]  #: the group's entries to read, ascending


@dataclass
class Plan:
    """The probes, in the order they run, then the bulk pages.

    ``bulk`` (only with ``make_plan(..., bulk=True)`` on `Leaves`) holds the pages of a large
    layout that get just a CPL3 read at their first byte, a table at a time; the verifier
    handles them column-wise, without a `Probe` or a `Leaf` each.
    """

    probes: list[Probe]
    coverage: Coverage
    bulk: list[BulkGroup] = field(default_factory=list)

    @property
    def bulk_pages(self) -> int:
        """How many pages are in ``bulk``."""
        return sum(len(b.indices) for b in self.bulk)


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
    levels: int = 4,
) -> Plan:
    """The probes for ``leaves`` (ascending virtual order, as `kvmpage.paging.leaves.scan` yields).
    ``excluded_p4``: slots of the top-level table (of the PML5 when ``levels`` is 5) not to
    probe holes in.

    With ``bulk`` and ``leaves`` a `Leaves`, the pages of a large layout that only get a CPL3
    read go to `Plan.bulk` instead of becoming probes.
    """
    cov = Coverage(pages=len(leaves))
    grouped = leaves if isinstance(leaves, Leaves) else None
    runs = runs_of(grouped) if grouped is not None else list(coalesce(leaves))
    reads: set[int] | None = None  # pages with a CPL3 read only (None: all the others)
    kernel_reads: set[int] = set()  # pages with a CPL0 read only
    if len(leaves) <= options.full_limit:
        full = set(range(len(leaves)))
        cov.strategy = "every page: read, write and fetch at CPL3 and CPL0"
    elif options.image_sample:
        full, reads, kernel_reads = _image_sample(leaves, runs, options)
        if not options.cpl0:
            reads |= kernel_reads
            kernel_reads = set()
        cov.strategy = (
            f"{len(full)} pages fully (one of every distinct level, flags and rights, "
            f"{options.sample} sampled with seed {options.seed}); a read of the first page of "
            "every run (CPL0 for kernel pages), a CPL3 read of every user page; the unmapped "
            "pages next to runs, one per 2 MiB region"
        )
    else:
        full = _chosen(leaves, runs, options)
        cov.strategy = (
            f"{len(full)} pages fully (every table's first page, each run's first and last, "
            f"every huge page, {options.sample} sampled with seed {options.seed})"
            + ("; a CPL3 read of every other page" if options.every_page else "")
        )
    if reads is None:
        reads = set() if not options.every_page else None
    probes: list[Probe] = []
    pages: list[BulkGroup] = []
    read_only = (len(leaves) - len(full)) if reads is None else len(reads)
    if grouped is not None and bulk and read_only:
        for k in sorted(full):
            probes.extend(_full(grouped[k], options))
        pages = _bulk_groups(grouped, full, reads)
    else:
        read, make = AccessKind.READ, tuple.__new__  # (a plain tuple.__new__: large plans)
        for i, leaf in enumerate(leaves):
            if i in full:
                probes.extend(_full(leaf, options))
            elif reads is None or i in reads:
                probes.append(make(Probe, (leaf.virt + READ_OFFSET, read, 3, leaf)))
    if kernel_reads:
        read0 = AccessKind.READ
        for k in sorted(kernel_reads):
            leaf = leaves[k]
            probes.append(Probe(leaf.virt + READ_OFFSET, read0, 0, leaf))
    cov.pages_full = len(full)
    cov.pages_read_only = read_only + len(kernel_reads)
    find = grouped.find if grouped is not None else _finder(leaves)
    for va in options.extra:
        base = va & ~0xFFF
        cov.extra += 1
        probes.extend(
            Probe(base + ACCESS_OFFSETS[a], a, cpl, find(va))
            for a, cpl in FULL_SET
            if cpl == 3 or options.cpl0
        )
    if options.holes:
        holes = _holes(runs, find, frozenset(excluded_p4), levels)
        if options.image_sample:  # one per 2 MiB region: those of one page table walk alike
            holes = list({va >> 21: va for va in reversed(holes)}.values())[::-1]
        for va in holes:
            cov.holes += 1
            probes.extend(
                Probe(va + ACCESS_OFFSETS[a], a, cpl, None)
                for a, cpl in FULL_SET
                if cpl == 3 or options.cpl0
            )
    if not options.cpl0:
        cov.strategy += " (CPL3 only)"
    return Plan(probes, cov, pages)


def _bulk_groups(leaves: Leaves, full: set[int], reads: set[int] | None = None) -> list[BulkGroup]:
    """Every page not in ``full`` (or only the pages of ``reads``), a group at a time."""
    if reads is not None:
        wanted = sorted(reads - full)
        out_only: list[BulkGroup] = []
        for group, first in zip(leaves.groups, leaves.offsets, strict=True):
            n = len(group.indices)
            lo, hi = bisect.bisect_left(wanted, first), bisect.bisect_left(wanted, first + n)
            if hi > lo:
                out_only.append(BulkGroup(group, [group.indices[k - first] for k in wanted[lo:hi]]))
        return out_only
    chosen = sorted(full)
    out: list[BulkGroup] = []
    for group, first in zip(leaves.groups, leaves.offsets, strict=True):
        n = len(group.indices)
        lo, hi = bisect.bisect_left(chosen, first), bisect.bisect_left(chosen, first + n)
        if hi == lo:
            out.append(BulkGroup(group, group.indices))
            continue
        taken = {k - first for k in chosen[lo:hi]}
        rest = [i for j, i in enumerate(group.indices) if j not in taken]
        if rest:
            out.append(BulkGroup(group, rest))
    return out


def _image_sample(
    leaves: Sequence[Leaf], runs: Sequence[Run], options: PlanOptions
) -> tuple[set[int], set[int], set[int]]:
    """The pages of an image's default sample (`PlanOptions.image_sample`): those that get the
    full set, those that get a CPL3 read only (user pages, on the MMU), and those that get a
    CPL0 read only (the first page of each kernel run: its frame is checked for about 5 us on
    this kind of host, where a faulting CPL3 read costs ten times more)."""
    full: set[int] = set()
    seen: set[tuple[int, int, Rights]] = set()
    reads: set[int] = set()
    kernel: set[int] = set()
    index = 0
    for run in runs:  # the runs cover the leaves in order, run.count leaves each
        key = (run.level, run.flags & ~0x60, run.rights)
        if key not in seen:
            seen.add(key)
            full.add(index)
        if run.rights.user:
            reads.update(range(index, index + run.count))
        else:
            kernel.add(index)
        index += run.count
    rng = random.Random(options.seed)
    full.update(rng.sample(range(len(leaves)), min(options.sample, len(leaves))))
    return full, reads - full, kernel - full


def _finder(leaves: Sequence[Leaf]) -> Callable[[int], Leaf | None]:
    """``va`` -> the leaf whose page holds it, for a plain list of leaves."""
    starts = [leaf.virt for leaf in leaves]

    def find(va: int) -> Leaf | None:
        i = bisect.bisect_right(starts, va) - 1
        return leaves[i] if i >= 0 and va < leaves[i].virt + leaves[i].size else None

    return find


def _chosen(leaves: Sequence[Leaf], runs: Sequence[Run], options: PlanOptions) -> set[int]:
    """Indices of the pages that get the full set in a large layout: every table's first
    page, every huge page, each run's first and last page, and a seeded sample."""
    chosen: set[int] = set()
    if isinstance(leaves, Leaves):
        seen = set()
        for group, first in zip(leaves.groups, leaves.offsets, strict=True):
            if group.table not in seen:
                seen.add(group.table)
                chosen.add(first)
            if group.level > 1:
                chosen.update(range(first, first + len(group.indices)))
    else:
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


def _holes(
    runs: Sequence[Run],
    find: Callable[[int], Leaf | None],
    excluded_p4: frozenset[int],
    levels: int = 4,
) -> list[int]:
    """Unmapped 4 KiB pages right before and after each run of mappings (``levels``: 4 or 5,
    which decides the canonical form and which slot of the top-level table a page is in)."""
    holes: list[int] = []
    top_shift = 3 + 9 * levels
    for run in runs:
        for va in (run.virt - 4096, run.virt_end):
            if not 0 <= va < 1 << 64:
                continue
            if canonicalize(va, levels) != va or (va >> top_shift) & 511 in excluded_p4:
                continue  # non-canonical (#GP, not a hole) or a reserved slot
            if find(va) is None:
                holes.append(va)
    return sorted(set(holes))
