"""Property-based stateful tests: each mapper against a plain Python model of the address space.

Random sequences of ``map_to`` (all three sizes, random flags), ``unmap``, ``update_flags``,
``translate`` / ``translate_addr``, ``clean_up_addr_range`` and ``clean_up`` run on a real mapper
writing real tables, and on a model that knows nothing about tables in memory: a dict of leaf
mappings and a set of which tables exist. After every step:

- ``translate`` of every modelled mapping (and of holes) agrees with the model;
- the allocator's frames in use are exactly the level-4 table plus the modelled tables, so
  ``clean_up`` freed exactly the empty tables: none leaked, none freed twice (the pool allocator
  refuses a double free);
- a failing operation raised the error the crate specifies and left the model's view unchanged
  (rules MP-05, MP-06..MP-16, C-02..C-08).

Leaf flags always include PRESENT and never HUGE_PAGE here: the behaviour of non-present and odd
leaves is pinned by the rule-by-rule tests, and the model stays a model of mappings.

Each mapper runs at 4 levels and at 5 (L5-04, L5-10): at 5 the model has level-4 tables below the
level-5 table, which clean-up frees like any other, and the addresses reach beyond 48 bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from support import IdentityMapping, frame_type

from kvmpage import PhysAddr, PhysMemory, VirtAddr, VirtAddr57
from kvmpage.addr import canonicalize
from kvmpage.paging import (
    FrameAllocationFailed,
    Mapped,
    MappedPageTable,
    NotMapped,
    OffsetPageTable,
    Page,
    PageAlreadyMapped,
    PageNotMapped,
    PageRangeInclusive,
    PageSize,
    PageTableFlags,
    ParentEntryHugePage,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    TableMapper,
)
from kvmpage.paging.page57 import PAGE_TYPES
from kvmpage.paging.table import PageTable

pytestmark = pytest.mark.filterwarnings("error::kvmpage.paging.UnusedFlushWarning")

F = PageTableFlags
SIZES: dict[int, type[PageSize]] = {1: Size4KiB, 2: Size2MiB, 3: Size1GiB}
SPAN = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30, 4: 1 << 39, 5: 1 << 48}
RECURSIVE_INDEX = 510
MEMORY = 8 << 20
TABLE_FRAMES = 40  # small on purpose: allocation failures happen

# A small universe of addresses so that mappings collide, nest and share tables (the level-5
# index is used at 5 levels only; 510 is the recursive slot at either depth).
P5_INDICES = (0, 1, 256, 511)
P4_INDICES = (0, 1, 256, 511)
P3_INDICES = (0, 1, 511)
P2_INDICES = (0, 1)
P1_INDICES = (0, 1, 511)

OPTIONAL_FLAGS = [
    F.WRITABLE,
    F.USER_ACCESSIBLE,
    F.WRITE_THROUGH,
    F.NO_CACHE,
    F.ACCESSED,
    F.DIRTY,
    F.GLOBAL,
    F.BIT_9,
    F.BIT_11,
    F.BIT_52,
    F.BIT_62,
    F.NO_EXECUTE,
]
leaf_flags = st.lists(st.sampled_from(OPTIONAL_FLAGS), max_size=5).map(
    lambda fs: int(F.PRESENT) | sum({int(f) for f in fs})
)


Indices = tuple[int, int, int, int, int]  # (p5, p4, p3, p2, p1)


def vaddr(p4: int, p3: int, p2: int, p1: int, p5: int = 0, levels: int = 4) -> int:
    """The canonical address of these indices (``p5`` counts at 5 levels only)."""
    va = (p4 << 39) | (p3 << 30) | (p2 << 21) | (p1 << 12)
    return canonicalize(va | (p5 << 48 if levels == 5 else 0), levels)


@st.composite
def pages(draw: st.DrawFn) -> tuple[int, Indices]:
    """(leaf level, indices) of a page of a random size inside the universe."""
    level = draw(st.sampled_from((1, 1, 2, 3)))
    p5 = draw(st.sampled_from(P5_INDICES))
    p4 = draw(st.sampled_from(P4_INDICES))
    p3 = draw(st.sampled_from(P3_INDICES))
    p2 = draw(st.sampled_from(P2_INDICES)) if level <= 2 else 0
    p1 = draw(st.sampled_from(P1_INDICES)) if level == 1 else 0
    return level, (p5, p4, p3, p2, p1)


def table_key(level: int, va: int) -> tuple[int, int]:
    """The table of ``level`` (1..4) whose region contains ``va``."""
    return (level, va & ~(SPAN[level + 1] - 1))


@dataclass
class Model:
    """Leaves by (level, start) -> (frame start, flags); the set of existing tables."""

    leaves: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    tables: set[tuple[int, int]] = field(default_factory=set)
    #: the level of the top table (the PML4, or the PML5 at 5 levels), which is never freed
    top: int = 4

    def leaf_covering(self, level: int, va: int) -> tuple[int, int] | None:
        key = (level, va & ~(SPAN[level] - 1))
        return key if key in self.leaves else None

    def walk_parents(self, level: int, va: int) -> str:
        """'ok' if all tables down to ``level`` exist, 'huge' / 'missing' at the first problem."""
        for t in range(self.top - 1, level - 1, -1):
            if self.leaf_covering(t + 1, va) is not None:
                return "huge"
            if table_key(t, va) not in self.tables:
                return "missing"
        return "ok"

    def lookup(self, va: int) -> tuple[int, int, int] | None:
        for level in (3, 2, 1):
            key = self.leaf_covering(level, va)
            if key is not None:
                frame, flags = self.leaves[key]
                return level, frame, flags
        return None

    def clean(self, level: int, prefix: int, start: int, end: int) -> bool:
        """The crate's clean-up algorithm on the model's tables (level: `top` = the top table)."""
        if start > end:
            return False
        if level > 1:
            span = SPAN[level]
            first = (start >> (3 + 9 * level)) & 511
            last = (end >> (3 + 9 * level)) & 511
            for i in range(first, last + 1):
                # the top table's entries step across the canonical hole, as the crate's Step
                if level == self.top:
                    child_start = canonicalize(i * span, self.top)
                else:
                    child_start = prefix + i * span
                child = (level - 1, child_start)
                if child not in self.tables:
                    continue
                sub_start = max(child_start, start)
                sub_end = min(child_start + span - 4096, end)
                if self.clean(level - 1, child_start, sub_start, sub_end):
                    self.tables.discard(child)
        return self.is_empty(level, prefix)

    def is_empty(self, level: int, prefix: int) -> bool:
        if level == self.top:
            return not self.tables and not self.leaves
        end = prefix + SPAN[level + 1]
        below = [k for k in self.tables if k[0] < level and prefix <= k[1] < end]
        leaves = [k for k in self.leaves if k[0] <= level and prefix <= k[1] < end]
        return not below and not leaves


class MapperMachine(RuleBasedStateMachine):
    """One mapper, one model, random operations."""

    KIND = "offset"
    LEVELS = 4
    #: Pages that map_to was asked for: later operations pick from them to hit real mappings.
    touched = Bundle("touched")

    def __init__(self) -> None:
        super().__init__()
        self.memory = PhysMemory(MEMORY)
        self.alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
            0x1000, 0x1000 * (TABLE_FRAMES + 1), memory=self.memory
        )
        p4 = self.alloc.allocate_frame()
        assert p4 is not None
        self.addr = VirtAddr57 if self.LEVELS == 5 else VirtAddr
        self.mapper: TableMapper = self._make_mapper(p4)
        self.model = Model(top=self.LEVELS)

    def _make_mapper(self, p4: PhysFrame[Size4KiB]) -> TableMapper:
        table = PageTable(self.memory, p4._start)
        levels = self.LEVELS
        if self.KIND == "offset":
            return OffsetPageTable(table, self.addr(0), levels=levels)
        if self.KIND == "mapped":
            # MP-01: a PageTableFrameMapping that reads tables where they are
            return MappedPageTable(table, IdentityMapping(self.memory), levels=levels)
        table[RECURSIVE_INDEX] = p4._start | int(F.PRESENT | F.WRITABLE)
        r = RECURSIVE_INDEX
        table_addr = self.addr(vaddr(r, r, r, r, r, levels))
        return RecursivePageTable(self.memory, table_addr, p4, levels=levels)

    def va(self, indices: Indices) -> int:
        p5, p4, p3, p2, p1 = indices
        return vaddr(p4, p3, p2, p1, p5, self.LEVELS)

    def page_of(self, level: int, va: int) -> Page:  # type: ignore[type-arg]
        """The page of ``level`` at ``va`` (a `Page57` at 5 levels)."""
        return PAGE_TYPES[self.LEVELS][SIZES[level]].containing_address(  # type: ignore[no-any-return]
            self.addr(va)
        )

    def teardown(self) -> None:
        self.memory.close()

    # -- rules ------------------------------------------------------------------------

    @rule(target=touched, page=pages(), flags=leaf_flags, frame_index=st.integers(0, 3))
    def map_to(
        self, page: tuple[int, Indices], flags: int, frame_index: int
    ) -> tuple[int, Indices]:
        """MP-04..MP-10, FA-04: creation order, PageAlreadyMapped, ParentEntryHugePage."""
        level, va = page[0], self.va(page[1])
        page_of = self.page_of
        size = SIZES[level]
        frame_start = (1 << 40) + frame_index * size.SIZE
        frame = frame_type(size).containing_address(PhysAddr(frame_start))
        expected = self._expect_map(level, va, flags)
        if expected is FrameAllocationFailed:
            # The crate creates tables top-down until the allocator runs dry; no rollback.
            with pytest.raises(FrameAllocationFailed):
                self.mapper.map_to(page_of(level, va), frame, flags, self.alloc)
        elif expected is None:
            self.mapper.map_to(page_of(level, va), frame, flags, self.alloc).ignore()
            self.model.leaves[(level, va)] = (frame_start, flags)
        else:
            with pytest.raises(expected) as info:
                self.mapper.map_to(page_of(level, va), frame, flags, self.alloc)
            if isinstance(info.value, PageAlreadyMapped):
                assert info.value.frame == frame  # the requested frame, issues #117/#461
        return page

    def _expect_map(self, level: int, va: int, flags: int) -> type[Exception] | None:
        """Apply to the model what map_to will change even when it fails; return the error."""
        free = self.alloc.remaining()  # (one frame per table the walk creates, top-down)
        for t in range(self.LEVELS - 1, level - 1, -1):
            huge = self.model.leaf_covering(t + 1, va)
            if huge is not None:
                # MP-05: the parent flags are OR'ed into the huge entry before the check fails
                frame, old = self.model.leaves[huge]
                self.model.leaves[huge] = (frame, old | (flags & 0b111))
                return ParentEntryHugePage
            key = table_key(t, va)
            if key not in self.model.tables:
                if free == 0:
                    return FrameAllocationFailed
                free -= 1
                self.model.tables.add(key)
        if self.model.leaf_covering(level, va) is not None:
            return PageAlreadyMapped
        if level > 1 and table_key(level - 1, va) in self.model.tables:
            return PageAlreadyMapped  # the entry points at a table: raw != 0 (MP-07)
        return None

    @rule(page=st.one_of(touched, pages()))
    def unmap(self, page: tuple[int, Indices]) -> None:
        """MP-12..MP-14, R-09: unmap never frees tables."""
        level, va = page[0], self.va(page[1])
        page_of = self.page_of
        state = self.model.walk_parents(level, va)
        key = (level, va)
        if state == "huge":
            expected: type[Exception] | None = ParentEntryHugePage
        elif state == "missing":
            expected = PageNotMapped
        elif key in self.model.leaves:
            expected = None
        elif level > 1 and table_key(level - 1, va) in self.model.tables:
            expected = ParentEntryHugePage  # issue #610
        else:
            expected = PageNotMapped
        if expected is None:
            frame, flush = self.mapper.unmap(page_of(level, va))
            flush.flush()
            assert frame.start_address().as_u64() == self.model.leaves.pop(key)[0]
        else:
            with pytest.raises(expected):
                self.mapper.unmap(page_of(level, va))

    @rule(page=st.one_of(touched, pages()), flags=leaf_flags)
    def update_flags(self, page: tuple[int, Indices], flags: int) -> None:
        """MP-16..MP-18, R-11: leaf flags replaced, HUGE_PAGE kept on huge leaves."""
        level, va = page[0], self.va(page[1])
        page_of = self.page_of
        state = self.model.walk_parents(level, va)
        key = (level, va)
        if state == "huge":
            if self.KIND == "recursive":
                return  # the recursive mapper would write into the huge page's data
            with pytest.raises(ParentEntryHugePage):
                self.mapper.update_flags(page_of(level, va), flags)
            return
        if state == "missing":
            with pytest.raises(PageNotMapped):
                self.mapper.update_flags(page_of(level, va), flags)
            return
        if key in self.model.leaves:
            self.mapper.update_flags(page_of(level, va), flags).flush()
            self.model.leaves[key] = (self.model.leaves[key][0], flags)
        elif level > 1 and table_key(level - 1, va) in self.model.tables:
            return  # MP-17: would turn a table pointer into a huge mapping; pinned elsewhere
        else:
            with pytest.raises(PageNotMapped):
                self.mapper.update_flags(page_of(level, va), flags)

    @rule(page=touched, before=st.integers(0, 2), after=st.integers(0, 2))
    def clean_up_around(self, page: tuple[int, Indices], before: int, after: int) -> None:
        """C-05, C-06: a range of a few 4 KiB pages around a page that was mapped."""
        va = self.va(page[1])
        start = self.addr.backward_checked(self.addr(va), before * 4096)
        end = self.addr.forward_checked(self.addr(va), after * 4096)
        if start is None or end is None:
            return
        rng = PageRangeInclusive(self.page_of(1, start._v), self.page_of(1, end._v))
        self.mapper.clean_up_addr_range(rng, self.alloc)
        self.model.clean(self.LEVELS, 0, start._v, end._v)

    @rule(
        p5=st.sampled_from(P5_INDICES),
        p4=st.sampled_from(P4_INDICES),
        p3=st.sampled_from(P3_INDICES),
        p2=st.sampled_from((0, 1, 2)),
        p1=st.sampled_from((0, 1, 2, 511)),
        last_p4=st.sampled_from(P4_INDICES),
        length=st.integers(0, 3),
    )
    def clean_up_addr_range(
        self, p5: int, p4: int, p3: int, p2: int, p1: int, last_p4: int, length: int
    ) -> None:
        """C-02, C-05, C-06, C-10: frees exactly the empty tables the algorithm reaches."""
        start = self.va((p5, p4, p3, p2, p1))
        end = self.va((p5, max(p4, last_p4), p3, p2 + length, p1)) if length else start
        rng = PageRangeInclusive(self.page_of(1, start), self.page_of(1, end))
        self.mapper.clean_up_addr_range(rng, self.alloc)
        self.model.clean(self.LEVELS, 0, start, end)

    @rule()
    def clean_up(self) -> None:
        """C-01: after a full clean-up only the tables that hold mappings remain."""
        self.mapper.clean_up(self.alloc)
        self.model.clean(self.LEVELS, 0, 0, 0xFFFF_FFFF_FFFF_F000)
        needed = {
            table_key(t, va) for (level, va) in self.model.leaves for t in range(level, self.LEVELS)
        }
        assert self.model.tables == needed

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def translate_agrees(self) -> None:
        """M-04, M-05, MP-25..MP-28: translate / translate_addr agree with the model."""
        for (level, va), (frame, flags) in self.model.leaves.items():
            for offset in (0, SPAN[level] - 8):
                addr = self.addr(va + offset)
                result = self.mapper.translate(addr)
                assert isinstance(result, Mapped), (addr, result)
                assert result.frame.start_address().as_u64() == frame
                assert result.frame.size() == SPAN[level]
                assert result.offset == offset
                expected_flags = flags | (int(F.HUGE_PAGE) if level > 1 else 0)
                assert int(result.flags) == expected_flags
                assert self.mapper.translate_addr(addr) == PhysAddr(frame + offset)

    @invariant()
    def holes_are_not_mapped(self) -> None:
        """Addresses outside every modelled mapping translate to NotMapped."""
        for p5 in P5_INDICES if self.LEVELS == 5 else (0,):
            for p4 in P4_INDICES:
                for p3 in (0, 2):
                    va = self.va((p5, p4, p3, 3, 7))
                    if self.model.lookup(va) is None:
                        assert isinstance(self.mapper.translate(self.addr(va)), NotMapped)
                        assert self.mapper.translate_addr(self.addr(va)) is None

    @invariant()
    def frames_accounted(self) -> None:
        """No table frame leaked or freed twice: in use = the top table + the modelled tables."""
        assert self.alloc.in_use() == 1 + len(self.model.tables)


class OffsetMachine(MapperMachine):
    KIND = "offset"


class MappedMachine(MapperMachine):
    KIND = "mapped"


class RecursiveMachine(MapperMachine):
    KIND = "recursive"


class Offset5Machine(MapperMachine):
    KIND = "offset"
    LEVELS = 5


class Mapped5Machine(MapperMachine):
    KIND = "mapped"
    LEVELS = 5


class Recursive5Machine(MapperMachine):
    KIND = "recursive"
    LEVELS = 5


_SETTINGS = settings(
    max_examples=int(os.environ.get("KVMPAGE_STATEFUL_EXAMPLES", "40")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestOffsetPageTableStateful = OffsetMachine.TestCase
TestOffsetPageTableStateful.settings = _SETTINGS
TestMappedPageTableStateful = MappedMachine.TestCase
TestMappedPageTableStateful.settings = _SETTINGS
TestRecursivePageTableStateful = RecursiveMachine.TestCase
TestRecursivePageTableStateful.settings = _SETTINGS
TestOffsetPageTable5Stateful = Offset5Machine.TestCase
TestOffsetPageTable5Stateful.settings = _SETTINGS
TestMappedPageTable5Stateful = Mapped5Machine.TestCase
TestMappedPageTable5Stateful.settings = _SETTINGS
TestRecursivePageTable5Stateful = Recursive5Machine.TestCase
TestRecursivePageTable5Stateful.settings = _SETTINGS
