"""Every mapping a set of tables holds, as the CPU sees it: the walk, a table at a time.

`scan_groups` enumerates the hierarchy under a top-level table with exactly the rules of
`kvmpage.paging.walk.walk` (presence, reserved bits per level and page size, MAXPHYADDR, NX with
EFER.NXE, PS at each level, 4 or 5 levels), but per table instead of per address: a level-1
table's leaves come out as one `LeafGroup` and a `Leaf` is only made when one is asked for
(the records are in `kvmpage.paging.records`, and importable from here).
What the CPU would fault on is listed too, as a `Fault` (an entry with reserved bits set, a
table the memory does not hold): it covers the whole range that entry translates.

Real kernels' tables are not trees. A table referenced from many entries (Linux's espfix maps
65,536 pages through a handful of shared tables) is read once and listed as often as the CPU
reaches it; a table that references itself (a recursive slot) is followed as the CPU follows it.
The total number of leaves is bounded (``limit``), so a pointer loop cannot run away.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import overload

from kvmpage.addr import canonicalize
from kvmpage.memory import PhysicalMemory, PhysMemoryError
from kvmpage.paging.arch import (
    ADDRESS_MASK,
    PAGE_SIZE_OF_LEVEL,
    PS,
    CpuState,
    Features,
    reserved_mask,
)
from kvmpage.paging.records import Fault, Hole, Leaf, LeafGroup
from kvmpage.paging.walk import Rights

_P, _W, _U = 1, 2, 4
#: Leaves one scan lists at most by default (a pointer loop fans out without end).
DEFAULT_LIMIT = 1 << 25

__all__ = [
    "DEFAULT_LIMIT", "Fault", "Hole", "Leaf", "LeafGroup", "Leaves", "Rights", "TooManyLeaves",
    "scan", "scan_groups", "table_frames",
]  # fmt: skip


class TooManyLeaves(ValueError):
    """The tables map more pages than the scan's limit (shared or self-referencing tables can
    fan out without end: a pointer loop)."""


class _Scan:
    """One enumeration: the rules (CPU state, features), the range, the bound, the cache."""

    def __init__(
        self,
        memory: PhysicalMemory,
        cpu: CpuState,
        features: Features,
        skip_top: frozenset[int],
        lo: int,
        hi: int,
        limit: int,
        faults: list[Fault] | None,
        holes: list[Hole] | None = None,
    ) -> None:
        self.memory = memory
        self.cpu = cpu
        self.features = features
        self.skip_top = skip_top
        self.lo, self.hi = lo, hi
        self.limit = limit
        self.count = 0
        self.faults = faults
        self.holes = holes
        self.levels = cpu.levels
        #: reserved bits of any entry, whatever its level and PS (address bits, NX)
        self.base_mask = reserved_mask(1, 0, cpu, features)
        self._words: dict[int, list[int] | None] = {}
        self._present: dict[int, list[int]] = {}

    def words(self, table: int) -> list[int] | None:
        """The table's 512 entries (read once per scan), or None when memory lacks it."""
        try:
            return self._words[table]
        except KeyError:
            pass
        try:
            found: list[int] | None = self.memory.table_words(table)
        except PhysMemoryError:
            found = None
        self._words[table] = found
        return found

    def fault(self, virt: int, level: int, raw: int, addr: int, kind: str, why: str) -> None:
        if self.faults is not None:
            size = PAGE_SIZE_OF_LEVEL.get(level, 1 << (12 + 9 * (level - 1)))
            self.faults.append(Fault(virt, size, level, raw, addr, kind, why))

    def counted(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise TooManyLeaves(
                f"the tables map more than {self.limit} pages (shared or self-referencing "
                "tables fan out: a table pointer loop?); look at part of the address space "
                "(a virtual range), or raise the limit"
            )

    def table(
        self,
        table: int,
        level: int,
        prefix: int,
        rights: int,
        nx: bool,
        path: tuple[int, ...],
        addrs: tuple[int, ...],
    ) -> Iterator[LeafGroup]:
        words = self.words(table)
        if words is None:  # only the root can get here: children are checked by their parent
            raise PhysMemoryError(f"the top-level table at {table:#x} is not in memory")
        span = 1 << (12 + 9 * (level - 1))
        lo, hi = self.lo, self.hi
        top = level == self.levels
        first, last = 0, 511
        if not top:  # (the top table's entries are canonicalized one by one below)
            if lo > prefix:
                first = min((lo - prefix) // span, 512)
            if hi < prefix + 512 * span:
                last = (hi - 1 - prefix) // span
        base_mask = self.base_mask
        if self.holes is not None:
            self._note_holes(words, first, last, prefix, span, level, top)
        if level == 1:  # the hot case: up to 512 leaves, no recursion
            if first == 0 and last == 511:
                # a table shared by many entries (espfix) is sorted out once
                present = self._present.get(table)
                if present is None:
                    present = [i for i, raw in enumerate(words) if raw & _P]
                    self._present[table] = present
            else:
                present = [i for i in range(first, last + 1) if words[i] & _P]
            if base_mask and present:
                present = self._drop_reserved(words, present, table, prefix, span, 1)
            if present:
                self.counted(len(present))
                yield LeafGroup(table, 1, prefix, words, present, rights, nx, path, addrs)
            return
        huge: list[int] = []
        cpu, features = self.cpu, self.features
        for i in range(first, last + 1):
            raw = words[i]
            if not raw & _P or (top and i in self.skip_top):
                continue
            va = prefix + i * span
            if top:
                va = canonicalize(va, self.levels)
                if va + span <= lo or va >= hi:
                    continue
            bad = raw & (base_mask | reserved_mask(level, raw, cpu, features))
            if bad:
                self.fault(va, level, raw, table + 8 * i, "reserved",
                           f"level-{level} entry has reserved bits {bad:#x} set")  # fmt: skip
                continue
            if raw & PS:  # levels 3 and 2: a huge page
                huge.append(i)
                continue
            if huge:
                self.counted(len(huge))
                yield LeafGroup(table, level, prefix, words, huge, rights, nx, path, addrs)
                huge = []
            child = raw & ADDRESS_MASK
            if self.words(child) is None:
                self.fault(va, level, raw, table + 8 * i, "absent",
                           f"level-{level} entry points at a table at {child:#x} that is not in "
                           "memory")  # fmt: skip
                continue
            yield from self.table(
                child, level - 1, va, rights & raw, nx or bool(raw >> 63 and cpu.nxe),
                (*path, raw), (*addrs, table + 8 * i),
            )  # fmt: skip
        if huge:
            self.counted(len(huge))
            yield LeafGroup(table, level, prefix, words, huge, rights, nx, path, addrs)

    def _note_holes(
        self,
        words: list[int],
        first: int,
        last: int,
        prefix: int,
        span: int,
        level: int,
        top: bool,
    ) -> None:
        """Record the runs of non-present entries in ``first..last`` as `Hole` ranges."""
        assert self.holes is not None
        start = None
        for i in range(first, last + 2):
            empty = i <= last and not words[i] & _P
            if top and empty and i == 256 and start is not None:  # the canonical hole splits
                self._hole(start, 256, prefix, span, level, top)
                start = None
            if empty and start is None:
                start = i
            elif not empty and start is not None:
                self._hole(start, i, prefix, span, level, top)
                start = None

    def _hole(self, a: int, b: int, prefix: int, span: int, level: int, top: bool) -> None:
        va = prefix + a * span
        if top:
            va = canonicalize(va, self.levels)
        assert self.holes is not None
        self.holes.append(Hole(va, (b - a) * span, level))

    def _drop_reserved(
        self, words: list[int], present: list[int], table: int, prefix: int, span: int, level: int
    ) -> list[int]:
        mask = self.base_mask
        kept = []
        for i in present:
            bad = words[i] & mask
            if bad:
                self.fault(prefix + i * span, level, words[i], table + 8 * i, "reserved",
                           f"level-{level} entry has reserved bits {bad:#x} set")  # fmt: skip
            else:
                kept.append(i)
        return kept


def scan_groups(
    memory: PhysicalMemory,
    root: int,
    *,
    skip_top: frozenset[int] = frozenset(),
    cpu: CpuState = CpuState(),  # noqa: B008 (frozen)
    features: Features = Features(),  # noqa: B008 (frozen)
    start: int = 0,
    end: int = 1 << 64,
    limit: int = DEFAULT_LIMIT,
    faults: list[Fault] | None = None,
    holes: list[Hole] | None = None,
    skip_p4: frozenset[int] | None = None,
) -> Iterator[LeafGroup]:
    """Every present leaf under the top-level table at ``root``, a table's worth at a time, in
    ascending virtual order, as `kvmpage.paging.walk.walk` would find them.

    ``skip_top``: top-level indices not to descend into (a recursive slot, the agent's slot;
    ``skip_p4`` is its old name). ``start``/``end``: only entries mapping part of
    ``[start, end)``. ``faults``: a list that receives every entry the CPU would fault on;
    ``holes``: one that receives the ranges non-present entries leave unmapped.
    Raises `TooManyLeaves` past ``limit`` leaves and `PhysMemoryError` when memory does not
    hold the top-level table.
    """
    skip = skip_top if skip_p4 is None else skip_p4 | skip_top
    state = _Scan(memory, cpu, features, skip, start, end, limit, faults, holes)
    _W_U = _W | _U
    yield from state.table(root & ADDRESS_MASK, cpu.levels, 0, _W_U, False, (), ())


def scan(
    memory: PhysicalMemory, root: int, *, skip_p4: frozenset[int] = frozenset(), **kwargs: object
) -> Iterator[Leaf]:
    """`scan_groups`, a `Leaf` per page."""
    for group in scan_groups(memory, root, skip_p4=skip_p4, **kwargs):  # type: ignore[arg-type]
        yield from group.leaves()


def table_frames(
    memory: PhysicalMemory,
    root: int,
    *,
    skip_p4: frozenset[int] = frozenset(),
    levels: int = 4,
) -> list[int]:
    """Physical addresses of every table reachable from the top-level table (itself included),
    each once, in the order found. Entries are followed as tables whatever their reserved bits
    (this is the set of frames a probe must never overwrite); tables memory lacks are left out.
    """
    root &= ADDRESS_MASK
    frames = [root]
    seen = {(root, levels)}
    found = {root}
    todo = [(root, levels)]
    while todo:
        table, level = todo.pop()
        try:
            words = memory.table_words(table)
        except PhysMemoryError:
            continue
        for i, raw in enumerate(words):
            if not raw & _P or (raw & PS and level <= 3) or (level == levels and i in skip_p4):
                continue
            child = raw & ADDRESS_MASK
            if not memory.contains(child, 4096):
                continue
            if child not in found:
                found.add(child)
                frames.append(child)
            if level > 2 and (child, level - 1) not in seen:  # a level-1 table holds pages only
                seen.add((child, level - 1))
                todo.append((child, level - 1))
    return frames


class Leaves(Sequence[Leaf]):
    """The leaves of `scan_groups`, in ascending virtual order, indexed like ``list(scan(...))``,
    and the entries the CPU faults on (`faults`)."""

    def __init__(self, groups: Sequence[LeafGroup], faults: Sequence[Fault] = ()) -> None:
        self.groups = list(groups)
        self.faults = list(faults)
        #: index of each group's first leaf
        self.offsets: list[int] = []
        n = 0
        for g in self.groups:
            self.offsets.append(n)
            n += len(g.indices)
        self._n = n
        self._starts = [g.virt(g.indices[0]) for g in self.groups]

    @classmethod
    def scan(
        cls,
        memory: PhysicalMemory,
        root: int,
        *,
        skip_p4: frozenset[int] = frozenset(),
        **kwargs: object,
    ) -> Leaves:
        """Scan the tables under ``root`` (`scan_groups`; its keyword arguments)."""
        faults: list[Fault] = []
        groups = list(scan_groups(memory, root, skip_p4=skip_p4, faults=faults, **kwargs))  # type: ignore[arg-type]
        return cls(groups, faults)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Leaf: ...

    @overload
    def __getitem__(self, index: slice) -> list[Leaf]: ...

    def __getitem__(self, index: int | slice) -> Leaf | list[Leaf]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if not -self._n <= index < self._n:
            raise IndexError(index)
        index %= self._n
        g = bisect.bisect_right(self.offsets, index) - 1
        group = self.groups[g]
        return group.leaf(group.indices[index - self.offsets[g]])

    def __iter__(self) -> Iterator[Leaf]:
        for group in self.groups:
            yield from group.leaves()

    def find(self, va: int) -> Leaf | None:
        """The leaf whose page holds ``va``, if any."""
        g = bisect.bisect_right(self._starts, va) - 1
        if g < 0:
            return None
        group = self.groups[g]
        index = (va - group.base) // group.span
        k = bisect.bisect_left(group.indices, index)
        if k < len(group.indices) and group.indices[k] == index:
            return group.leaf(index)
        return None

    def count_by_size(self) -> dict[int, int]:
        """Leaves per page size (bytes -> count)."""
        out: dict[int, int] = {}
        for g in self.groups:
            out[g.span] = out.get(g.span, 0) + len(g.indices)
        return out

    def spans(self) -> Iterator[tuple[Leaf, Leaf, int]]:
        """``(first, last, count)`` of stretches of leaves known to coalesce into one run
        (a whole contiguous table at once), in order: the input of ``coalesce_spans``."""
        for group in self.groups:
            if group.contiguous():
                idx = group.indices
                yield group.leaf(idx[0]), group.leaf(idx[-1]), len(idx)
            else:
                for leaf in group.leaves():
                    yield leaf, leaf, 1
