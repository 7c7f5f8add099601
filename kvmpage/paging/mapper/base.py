"""The engine shared by the three mappers: `Mapper`, `Translate` and `CleanUp` on raw entries.

The crate's mappers differ only in how they reach a child table (through a physical-to-virtual
mapping, or through the recursive virtual address) and in a handful of checks (rules R-05..R-16).
`TableMapper` implements every operation once over raw 64-bit entries and asks its subclass two
questions: where is the top-level table, and where is the child table of a given entry. Where
they check differently, the class's ``RULES`` (`kvmpage.paging.mapper.rules`) says how, one named
method per rule.

Each mapper walks 4 levels from a PML4 (the crate's only depth, the default) or, with
``levels=5``, 5 levels from a PML5 (CR4.LA57; not in the crate, rules L5-04..L5-11): its
`kvmpage.paging.mapper.depth.Depth` says which pages and addresses it takes and which levels
it walks. Everything else is the same code at both depths.

Tables are handled as ``(words, base)`` pairs: ``words`` is the memory as u64 words and
``base`` the word index of the table's entry 0. That keeps the walks free of object churn.
The entry bits and helpers this module shares with `map_range` and the fast paths are in
`kvmpage.paging.mapper.entries`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, cast

from kvmpage.addr import AnyVirtAddr, PhysAddr
from kvmpage.memory import PhysicalMemory
from kvmpage.paging.frame_alloc import FrameAllocator, FrameDeallocator
from kvmpage.paging.mapper.checks import (
    ALLOCATORS,
    BAD_FLAG_BITS,
    allocator_arg,
    deallocator_arg,
    flags_arg,
    frame_arg,
    page_arg,
)
from kvmpage.paging.mapper.cleanup import clean
from kvmpage.paging.mapper.depth import DEPTH4, Depth
from kvmpage.paging.mapper.entries import (
    ADDRESS_MASK,
    FRAME_OF_LEVEL,
    HUGE_FLAG_ASSERTION,
    HUGE_PAGE,
    PARENT_FLAG_MASK,
    PRESENT,
    WRITABLE,
    ZERO_TABLE,
    S,
    Table,
    index,
)
from kvmpage.paging.mapper.errors import (
    FrameAllocationFailed,
    InvalidFrameAddress,
    PageAlreadyMapped,
    PageNotMapped,
    ParentEntryHugePage,
)
from kvmpage.paging.mapper.flush import MapperFlush, MapperFlushAll, RecordingTlb, Tlb
from kvmpage.paging.mapper.map_range import map_range
from kvmpage.paging.mapper.rules import MAPPED_RULES, TableRules
from kvmpage.paging.mapper.translate import (
    InvalidFrameAddressResult,
    Mapped,
    MappedFrame,
    NotMapped,
    TranslateResult,
)
from kvmpage.paging.page import Page, PageRange, PageRangeInclusive, PhysFrame, Size4KiB
from kvmpage.paging.table import PageTable, PageTableFlags
from kvmpage.panic import Panic

__all__ = [
    "ADDRESS_MASK",
    "HUGE_PAGE",
    "PRESENT",
    "WRITABLE",
    "S",
    "Table",
    "TableMapper",
    "Translate",
]


class Translate(Protocol):
    """The crate's ``Translate`` trait (M-04)."""

    def translate(self, addr: AnyVirtAddr) -> TranslateResult: ...

    def translate_addr(self, addr: AnyVirtAddr) -> PhysAddr | None: ...


class TableMapper:
    """`Mapper` for all three page sizes, `Translate` and `CleanUp`, over raw table entries.

    Subclasses provide `_top` and `_child` (and `_child_of` where `_child` does not depend on
    the entry's value alone); everything else is shared. Every method accepts a page
    of any size (``Page``, ``Page[Size2MiB]``, ``Page[Size1GiB]``; at 5 levels ``Page57`` ones
    too) and dispatches on it, like the crate's ``Mapper<S>`` implementations.
    """

    #: The checks this mapper makes on parent and leaf entries (`RecursiveRules` for the
    #: recursive mapper: R-05, R-10, R-14, R-16).
    RULES: ClassVar[TableRules] = MAPPED_RULES

    memory: PhysicalMemory
    tlb: Tlb
    #: what the paging depth decides (`kvmpage.paging.mapper.depth`)
    depth: Depth = DEPTH4
    #: 4 (PML4) or 5 (PML5): the tables a walk reads
    levels: int = 4

    def __init__(self, memory: PhysicalMemory, tlb: Tlb | None, depth: Depth = DEPTH4) -> None:
        self.memory = memory
        self.tlb = tlb if tlb is not None else RecordingTlb()
        self.depth = depth
        self.levels = depth.levels

    # -- hooks ----------------------------------------------------------------------------

    def _top(self) -> Table:
        """The top-level table: the PML4, or the PML5 of a 5-level mapper."""
        raise NotImplementedError

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        """The table of ``child_level`` that entry ``raw`` (on the walk of ``va``) leads to."""
        raise NotImplementedError

    def _child_of(self, raw: int, va: int, child_level: int) -> Table:
        """The table `_child` would reach through the entry ``raw`` once ``raw`` is stored there.

        `map_range` checks a whole range as a loop of `map_to` would see the tables, before it
        writes anything; this is how it follows a parent whose flags the loop would have OR'ed.
        The mapped and offset mappers find a table from the entry's address alone.
        """
        return self._child(raw, va, child_level)

    def _prepare_range_walk(self) -> None:
        """Raise, before `map_range` reads any entry, what `map_to` would raise before it reads
        one, or refuse a mapper whose tables `_child_of` cannot follow."""

    def _skip_in_clean_up(self, level: int, index: int) -> bool:
        return False

    def _check_new_table(self, phys: int) -> None:
        """Refuse, before anything is linked, a new table frame this mapper cannot reach."""
        self.memory.check(phys, 4096)

    # -- walking helpers ------------------------------------------------------------------

    def _descend(self, table: Table, va: int, level: int, loose: bool) -> Table:
        """Step from ``table`` (at ``level``) to the child on the walk of ``va``.

        Strict (``entry.frame()``, MP-03, R-09): not present -> PageNotMapped, huge ->
        ParentEntryHugePage. Loose (recursive update/translate_page, R-10): only raw == 0 fails.
        """
        q, b = table
        raw = q[b + index(va, level)]
        self.RULES.check_walked_parent(raw, loose)
        return self._child(raw, va, level - 1)

    def _leaf_level(self, page: Any) -> int:
        """The level of the entry that maps ``page`` (a page this mapper takes, else
        `TypeError`)."""
        level = self.depth.leaf_levels.get(type(page))
        if level is None:
            page_arg(page)
            self.depth.refuse_page(page)
            raise TypeError(f"expected a Page, got {type(page).__name__}")
        return level

    def _pair_level(self, page: Any, frame: Any) -> int:
        """`_leaf_level`, and ``frame`` must be a `PhysFrame` of the same size (never None)."""
        if type(page) is Page and type(frame) is PhysFrame:  # the common case, first
            return 1
        level = self.depth.pair_levels.get((type(page), type(frame)))
        if level is None:  # not a matching pair: say what is wrong
            page_arg(page)
            frame_arg(page, frame)
            return self._leaf_level(page)
        return level

    def _walk_to(self, va: int, level: int, loose: bool) -> Table:
        """The table of ``level`` on the walk of ``va`` (no creation)."""
        t = self._top()
        for lvl in range(self.levels, level, -1):
            t = self._descend(t, va, lvl, loose)
        return t

    def _create_next_table(
        self, table: Table, va: int, level: int, insert: int, allocator: FrameAllocator[Any]
    ) -> Table:
        """The crate's ``create_next_table`` (MP-04, R-05, R-06)."""
        q, b = table
        i = b + index(va, level)
        raw = q[i]
        created = False
        if raw == 0:
            frame = allocator.allocate_frame()
            if frame is None:
                raise FrameAllocationFailed()
            if type(frame) is not PhysFrame:
                raise TypeError(f"the allocator returned {frame!r}, not a 4 KiB PhysFrame")
            self._check_new_table(frame._start)
            new_flags = self.RULES.new_parent_flags(insert)
            if new_flags & HUGE_PAGE:
                raise Panic(HUGE_FLAG_ASSERTION)
            q[i] = raw = frame._start | new_flags
            created = True
        elif insert and raw & insert != insert:
            q[i] = raw = raw | insert
        self._check_parent(raw)
        child = self._child(raw, va, level - 1)
        if created:
            cq, cb = child
            cq[cb : cb + 512] = ZERO_TABLE
        return child

    def _check_parent(self, raw: int) -> None:
        """The checks of `_create_next_table` on a parent entry, once it is linked or OR'ed."""
        self.RULES.check_linked_parent(raw)

    # -- Mapper ---------------------------------------------------------------------------

    def map_to(
        self, page: Page[S], frame: PhysFrame[S], flags: int, frame_allocator: FrameAllocator[Any]
    ) -> MapperFlush[S]:
        """Map ``page`` to ``frame`` with ``flags``; parents get ``flags & (P|W|U)`` (M-02).

        The arguments are checked first (`TypeError`, `ValueError`: nothing is changed). Then it
        raises `FrameAllocationFailed`, `ParentEntryHugePage` or `PageAlreadyMapped` (with the
        requested frame), and nothing is rolled back, like the crate (MP-05): what each error
        leaves behind is listed in docs/divergences.md.
        """
        if type(flags) is PageTableFlags and not flags._value_ & BAD_FLAG_BITS:
            f: int = flags._value_  # what `flags_arg` returns, without its call (a hot path)
        else:
            f = flags_arg(flags)
        if type(frame_allocator) not in ALLOCATORS:
            allocator_arg(frame_allocator)
        return self._map(page, frame, f, f & PARENT_FLAG_MASK, frame_allocator)

    def map_to_with_table_flags(
        self,
        page: Page[S],
        frame: PhysFrame[S],
        flags: int,
        parent_table_flags: int,
        frame_allocator: FrameAllocator[Any],
    ) -> MapperFlush[S]:
        """Map with explicit flags for new parents / to OR into existing parents (MP-04..MP-11).

        Arguments are checked as by `map_to`, ``parent_table_flags`` as flags."""
        f = flags_arg(flags)
        insert = flags_arg(parent_table_flags, "parent_table_flags")
        allocator_arg(frame_allocator)
        return self._map(page, frame, f, insert, frame_allocator)

    def _map(
        self,
        page: Page[S],
        frame: PhysFrame[S],
        f: int,
        insert: int,
        frame_allocator: FrameAllocator[Any],
    ) -> MapperFlush[S]:
        """`map_to_with_table_flags` once the flags and the allocator are checked (subclasses
        put their fast paths here)."""
        level = self._pair_level(page, frame)
        va = page._start
        t = self._top()
        for lvl in range(self.levels, level, -1):
            t = self._create_next_table(t, va, lvl, insert, frame_allocator)
        q, b = t
        i = b + index(va, level)
        if q[i] != 0:
            raise PageAlreadyMapped(frame)
        if level == 1:
            if f & HUGE_PAGE:
                raise Panic(HUGE_FLAG_ASSERTION)
            q[i] = frame._start | f
        else:
            q[i] = frame._start | f | HUGE_PAGE
        return MapperFlush(page, self.tlb)

    def unmap(self, page: Page[S]) -> tuple[PhysFrame[S], MapperFlush[S]]:
        """Clear the leaf entry of ``page``; returns the frame it mapped (MP-12..MP-15, R-09).

        Tables are never freed here (see `clean_up`).
        """
        level = self._leaf_level(page)
        va = page._start
        q, b = self._walk_to(va, level, loose=False)
        i = b + index(va, level)
        raw = q[i]
        if not raw & PRESENT:
            raise PageNotMapped()
        addr = raw & ADDRESS_MASK
        if level == 1:
            if raw & HUGE_PAGE:
                raise ParentEntryHugePage()
        else:
            if not raw & HUGE_PAGE:
                raise ParentEntryHugePage()  # misnamed in the crate: issue #610
            if addr & ((1 << (12 + 9 * (level - 1))) - 1):
                raise InvalidFrameAddress(PhysAddr._raw(addr))
        q[i] = 0
        return FRAME_OF_LEVEL[level]._make(addr), MapperFlush(page, self.tlb)

    def update_flags(self, page: Page[S], flags: int) -> MapperFlush[S]:
        """Replace the leaf's flags (huge leaves keep HUGE_PAGE); parents untouched (#534)."""
        level = self._leaf_level(page)
        f = flags_arg(flags)
        va = page._start
        q, b = self._walk_to(va, level, loose=True)
        i = b + index(va, level)
        raw = q[i]
        if raw == 0:
            raise PageNotMapped()
        if level > 1:
            f |= HUGE_PAGE
        q[i] = (raw & ADDRESS_MASK) | f
        return MapperFlush(page, self.tlb)

    def _set_flags_at(self, page: Page[Any], table_level: int, flags: int) -> MapperFlushAll:
        level = self._leaf_level(page)
        f = flags_arg(flags)
        if level >= table_level:
            raise ParentEntryHugePage()
        va = page._start
        q, b = self._walk_to(va, table_level, loose=True)
        i = b + index(va, table_level)
        raw = q[i]
        if raw == 0:
            raise PageNotMapped()
        q[i] = (raw & ADDRESS_MASK) | f
        return MapperFlushAll(self.tlb)

    def set_flags_p5_entry(self, page: Page[Any], flags: int) -> MapperFlushAll:
        """Replace the flags of the level-5 entry above ``page`` exactly, like MP-19 one level
        up (L5-08); a 5-level mapper only (`TypeError` on a 4-level one)."""
        if self.levels != 5:
            raise TypeError("set_flags_p5_entry needs a 5-level mapper (levels=5)")
        return self._set_flags_at(page, 5, flags)

    def set_flags_p4_entry(self, page: Page[Any], flags: int) -> MapperFlushAll:
        """Replace the flags of the level-4 entry above ``page`` exactly (MP-19)."""
        return self._set_flags_at(page, 4, flags)

    def set_flags_p3_entry(self, page: Page[Any], flags: int) -> MapperFlushAll:
        """Replace the flags of the level-3 entry; a 1 GiB page is `ParentEntryHugePage` (MP-20)."""
        return self._set_flags_at(page, 3, flags)

    def set_flags_p2_entry(self, page: Page[Any], flags: int) -> MapperFlushAll:
        """Replace the flags of the level-2 entry; 2 MiB / 1 GiB pages fail (MP-21)."""
        return self._set_flags_at(page, 2, flags)

    def translate_page(self, page: Page[S]) -> PhysFrame[S]:
        """The frame the leaf entry of ``page`` holds; flags are not looked at (MP-22..MP-24)."""
        level = self._leaf_level(page)
        va = page._start
        q, b = self._walk_to(va, level, loose=True)
        raw = q[b + index(va, level)]
        if raw == 0:
            raise PageNotMapped()
        addr = raw & ADDRESS_MASK
        if addr & ((1 << (12 + 9 * (level - 1))) - 1):
            raise InvalidFrameAddress(PhysAddr._raw(addr))
        return FRAME_OF_LEVEL[level]._make(addr)  # type: ignore[no-any-return]

    def identity_map(
        self, frame: PhysFrame[S], flags: int, frame_allocator: FrameAllocator[Any]
    ) -> MapperFlush[S]:
        """Map ``frame`` at the equal virtual address; panics above 2**47 (M-03). A 5-level
        mapper maps a `Page57`, and never panics: a frame lies below 2**52 (L5-05)."""
        if not isinstance(frame, PhysFrame):
            raise TypeError(f"expected a PhysFrame, got {type(frame).__name__}")
        depth = self.depth
        page_type: Any = depth.page_of_level[cast(Any, frame.SIZE_TYPE).LEVEL]
        page = page_type.containing_address(depth.addr_type(frame._start))
        return self.map_to(page, frame, flags, frame_allocator)

    # -- bulk mapping (not in the crate) --------------------------------------------------

    def map_range(
        self,
        pages: PageRange[S] | PageRangeInclusive[S],
        first_frame: PhysFrame[S],
        flags: int,
        frame_allocator: FrameAllocator[Any],
        parent_table_flags: int | None = None,
    ) -> MapperFlushAll:
        """Map page k of ``pages`` to ``first_frame + k``: the tables of a `map_to` loop, in one
        call (`kvmpage.paging.mapper.map_range.map_range` says exactly how it differs)."""
        return map_range(self, pages, first_frame, flags, frame_allocator, parent_table_flags)

    # -- Translate ------------------------------------------------------------------------

    def translate(self, addr: AnyVirtAddr) -> TranslateResult:
        """Walk ``addr``: `Mapped` (with the leaf's flags only), `NotMapped` or
        `InvalidFrameAddress` (MP-25..MP-30, R-14..R-16). A 5-level mapper also takes a
        `VirtAddr57` (L5-06)."""
        found = self._translate_raw(self.depth.check_addr(addr))
        if found is None:
            return NotMapped()
        level, raw, va = found
        addr_field = raw & ADDRESS_MASK
        span = 1 << (12 + 9 * (level - 1))
        if level == 1 and addr_field & 0xFFF:  # cannot happen: the field is 4 KiB aligned
            return InvalidFrameAddressResult(PhysAddr._raw(addr_field))
        frame = FRAME_OF_LEVEL[level]._make(addr_field & ~(span - 1))
        return Mapped(MappedFrame(frame), va & (span - 1), PageTableFlags(raw & ~ADDRESS_MASK))

    def translate_addr(self, addr: AnyVirtAddr) -> PhysAddr | None:
        """The physical address ``addr`` maps to, or None (M-04)."""
        found = self._translate_raw(self.depth.check_addr(addr))
        if found is None:
            return None
        level, raw, va = found
        span_mask = (1 << (12 + 9 * (level - 1))) - 1
        return PhysAddr((raw & ADDRESS_MASK & ~span_mask) + (va & span_mask))

    def _translate_raw(self, va: int) -> tuple[int, int, int] | None:
        """(leaf level, leaf raw entry, va) or None for NotMapped; panics as the crate."""
        rules = self.RULES
        t = self._top()
        for level in self.depth.walk:
            q, b = t
            raw = q[b + index(va, level)]
            if level == 1:
                if raw == 0:
                    return None
                rules.check_translated_leaf(raw)
                return (1, raw, va)
            if rules.translate_stops_at(raw, level):
                return None
            if raw & HUGE_PAGE:
                if level >= 4:  # (PS is reserved at levels 4 and 5: L5-07)
                    raise Panic(f"level {level} entry has huge page bit set")
                return (level, raw, va)
            t = self._child(raw, va, level - 1)
        raise AssertionError("unreachable")

    # -- CleanUp --------------------------------------------------------------------------

    def clean_up(self, frame_deallocator: FrameDeallocator[Any]) -> None:
        """Free every empty page table of the whole address space (C-01)."""
        deallocator_arg(frame_deallocator)
        clean(self, self._top(), self.levels, 0, 0xFFFF_FFFF_FFFF_F000, frame_deallocator)

    def clean_up_addr_range(
        self, range: PageRangeInclusive[Size4KiB], frame_deallocator: FrameDeallocator[Any]
    ) -> None:
        """Free the empty page tables reachable from entries covering ``range`` (C-02..C-12).

        The top-level table itself, leaf frames, huge mappings and non-present entries are kept.
        """
        if (
            not isinstance(range, PageRangeInclusive)
            or self.depth.leaf_levels.get(type(range.start)) != 1
        ):
            self.depth.refuse_page(getattr(range, "start", None))
            raise TypeError("clean_up_addr_range takes a PageRangeInclusive of 4 KiB pages")
        deallocator_arg(frame_deallocator)
        clean(self, self._top(), self.levels, range.start._start, range.end._start,
              frame_deallocator)  # fmt: skip

    # -- inspection -----------------------------------------------------------------------

    def top_level_table(self) -> PageTable:
        """The top-level table as a `PageTable` view: the PML4, or the PML5 at 5 levels."""
        return PageTable(self.memory, self._top()[1] << 3)

    def level_4_table(self) -> PageTable:
        """The level-4 table as a `PageTable` view; a 5-level mapper has one per level-5
        entry, so it raises `TypeError` there (use `top_level_table` / `level_5_table`)."""
        if self.levels != 4:
            raise TypeError(
                "a 5-level mapper's top table is its level-5 table: use level_5_table() or "
                "top_level_table()"
            )
        return self.top_level_table()

    def level_5_table(self) -> PageTable:
        """The level-5 table of a 5-level mapper (`TypeError` on a 4-level one)."""
        if self.levels != 5:
            raise TypeError("a 4-level mapper has no level-5 table: use level_4_table()")
        return self.top_level_table()
