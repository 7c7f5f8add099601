"""`map_range`: bulk mapping of consecutive pages to consecutive frames (not in the crate).

The contract, for all three mappers and all three page sizes: the memory after ``map_range`` is,
byte for byte, the memory after a loop of ``map_to`` (or ``map_to_with_table_flags``) over the
same pages and frames, with the same table frames taken from the allocator in the same order;
except that an error the loop would meet on some page, other than the allocator running out, is
raised for the first such page before anything is written or allocated, and that an allocator
running out midway leaves the loop's partial state and says how many pages were mapped.

`check_against_loop` runs each case on fresh twins of one setup (map_range on one, the loop on
the others) and asserts that contract; the tests feed it hand-picked cases and, at the end,
random ones (Hypothesis), including raw entry edits that make tables alias each other.

The physical memory is the probe arena of ``support``: 4 MiB, the level-4 table at 0x1000, table
frames from 0x2000 up to 1 MiB, the recursive entry at 510 for the recursive mapper. Leaf frames
need not lie inside the memory. Every case also runs at 5 levels (L5-11: a level-5 table at
0x1000), with ranges beyond 48 bits and across level-5 boundaries.
"""

from __future__ import annotations

import contextlib
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
import support
from hypothesis import HealthCheck, given, settings
from support import (
    ALLOC_END,
    ALLOC_START,
    MEM_SIZE,
    NX,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    Env,
    F,
    H,
    P,
    R,
    U,
    W,
    frame4k,
    page2m,
    page4k,
)

from kvmpage import Panic, PhysAddr, PhysMemory, PhysMemoryError, VirtAddr, VirtAddr57
from kvmpage.addr import canonicalize
from kvmpage.paging import (
    FrameAllocationFailed,
    Mapped,
    MapperFlushAll,
    Page,
    PageAlreadyMapped,
    PageRange,
    PageRangeInclusive,
    ParentEntryHugePage,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    SoftPageFault,
    TableMapper,
)
from kvmpage.paging.mapper import map_range as map_range_module
from kvmpage.paging.page57 import PAGE_TYPES

pytestmark = STRICT_FLUSH_TOKENS

KINDS = ["mapped", "offset", "recursive"]
PAGE: dict[int, Any] = {1: Page, 2: Page[Size2MiB], 3: Page[Size1GiB]}
FRAME: dict[int, Any] = {1: PhysFrame, 2: PhysFrame[Size2MiB], 3: PhysFrame[Size1GiB]}
STEP = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
GIB = 1 << 30


def va_of(p4: int, p3: int = 0, p2: int = 0, p1: int = 0, *, p5: int | None = None) -> int:
    """The address of these indices: 48-bit, or 57-bit when ``p5`` is given."""
    va = (p4 << 39) | (p3 << 30) | (p2 << 21) | (p1 << 12)
    if p5 is None:
        return VirtAddr.new_truncate(va)._v
    return VirtAddr57.new_truncate(va | p5 << 48)._v


def page_class(levels: int, level: int) -> Any:
    """The page class of ``level`` at ``levels`` (a `Page57` one at 5)."""
    return PAGE_TYPES[levels][(Size4KiB, Size2MiB, Size1GiB)[level - 1]]


def addr_class(levels: int) -> Any:
    return VirtAddr57 if levels == 5 else VirtAddr


# -- the reference: a loop of map_to, on twins of one setup --------------------------------------


@dataclass
class Case:
    """One call: ``count`` pages of ``level`` from ``va`` to frames from ``frame``, after
    ``setup`` ran on a fresh `Env` of ``kind`` (deterministic, so twins are identical)."""

    kind: str
    level: int
    va: int
    count: int
    frame: int
    flags: int = int(P | W)
    parent: int | None = None
    setup: Callable[[Env], None] = field(default=lambda e: None)
    inclusive: bool = False
    levels: int = 4

    def env(self) -> Env:
        e = support.make_env(self.kind, PhysMemory(MEM_SIZE), levels=self.levels)
        self.setup(e)
        return e

    def pages(self) -> PageRange[Any] | PageRangeInclusive[Any]:
        page, addr = page_class(self.levels, self.level), addr_class(self.levels)
        start = page.from_start_address(addr(self.va))
        step = STEP[self.level]
        if self.inclusive and self.count:  # the only way to end at the top of the space
            last = page.from_start_address(addr(self.va + (self.count - 1) * step))
            return PageRangeInclusive(start, last)
        return PageRange(start, page.from_start_address(addr(self.va + self.count * step)))

    def first_frame(self) -> Any:
        return FRAME[self.level].from_start_address(PhysAddr(self.frame))


def allocator(e: Env, limit: int | None) -> PoolFrameAllocator[Size4KiB]:
    """The frames after those the setup used: ``limit`` of them, or all up to ALLOC_END."""
    start = ALLOC_START + 4096 * len(e.alloc.allocated)
    end = ALLOC_END if limit is None else start + 4096 * limit
    return PoolFrameAllocator(start, end, memory=e.memory)


def run_loop(e: Env, case: Case, alloc: PoolFrameAllocator[Size4KiB]) -> tuple[int, Any]:
    """The loop map_range stands for: (pages mapped, the exception that stopped it or None)."""
    step = STEP[case.level]
    done = 0
    try:
        page_type, addr = page_class(case.levels, case.level), addr_class(case.levels)
        for k in range(case.count):
            page = page_type.from_start_address(addr(case.va + k * step))
            frame = FRAME[case.level].from_start_address(PhysAddr(case.frame + k * step))
            if case.parent is None:
                token = e.mapper.map_to(page, frame, case.flags, alloc)
            else:
                token = e.mapper.map_to_with_table_flags(
                    page, frame, case.flags, case.parent, alloc
                )
            token.ignore()
            done += 1
    except Exception as exc:
        return done, exc
    return done, None


def run_map_range(e: Env, case: Case, alloc: PoolFrameAllocator[Size4KiB]) -> Any:
    """map_range's exception, or None (its token flushed)."""
    try:
        token = e.mapper.map_range(case.pages(), case.first_frame(), case.flags, alloc, case.parent)
    except Exception as exc:
        return exc
    assert isinstance(token, MapperFlushAll)
    token.flush_all()
    return None


def run_map_range_raising(e: Env, case: Case) -> None:
    e.mapper.map_range(case.pages(), case.first_frame(), case.flags, e.alloc, case.parent)


def frames(alloc: PoolFrameAllocator[Size4KiB]) -> list[int]:
    return [f._start for f in alloc.allocated]


def check_against_loop(case: Case, limit: int | None = None) -> str:
    """Assert the contract for ``case`` with an allocator of ``limit`` frames (None: plenty).
    Returns what happened: "mapped", "conflict" or "partial"."""
    a = case.env()
    before = bytes(a.memory._buf)
    a_alloc = allocator(a, limit)
    a_err = run_map_range(a, case, a_alloc)

    # What the loop meets first, allocation aside: the loop with plenty of frames.
    c = case.env()
    c_alloc = allocator(c, None)
    c_done, c_err = run_loop(c, case, c_alloc)
    assert not isinstance(c_err, FrameAllocationFailed), "the test needs more table frames"
    if c_err is not None:
        assert a_err is not None, f"the loop raised {c_err!r} at page {c_done}"
        assert (type(a_err), str(a_err)) == (type(c_err), str(c_err))
        if isinstance(c_err, PageAlreadyMapped):
            assert a_err.frame == c_err.frame
        assert bytes(a.memory._buf) == before, "memory changed although map_range raised"
        assert frames(a_alloc) == []
        return "conflict"

    b, b_alloc = c, c_alloc
    b_done, b_err = c_done, c_err
    if limit is not None:
        b = case.env()
        b_alloc = allocator(b, limit)
        b_done, b_err = run_loop(b, case, b_alloc)
    assert a.memory._buf == b.memory._buf
    assert frames(a_alloc) == frames(b_alloc)
    if b_err is None:
        assert a_err is None, a_err
        return "mapped"
    assert isinstance(b_err, FrameAllocationFailed)
    assert isinstance(a_err, FrameAllocationFailed)
    assert a_err.pages_mapped == b_done
    return "partial"


# -- same memory as the loop -------------------------------------------------------------------

# (level, first page, count): across table boundaries, starting and ending mid-table, across a
# level-4 boundary, in the upper half, up to the last page of the address space.
RANGES = [
    (1, 0x1000, 1),
    (1, 0x1F_D000, 5),  # across a level-1 table boundary
    (1, 0x3FF0_0000, 1100),  # mid-table to mid-table, across a 1 GiB boundary
    (1, va_of(1) - 7 * 4096, 20),  # across a level-4 boundary
    (1, va_of(256, 3, 4, 500), 700),  # upper half
    (1, 0xFFFF_FFFF_FFFF_D000, 3),  # the last pages of the address space
    (2, 0x20_0000, 1),
    (2, va_of(0, 0, 509), 6),  # across a level-2 table boundary
    (2, va_of(1) - 3 * (1 << 21), 600),  # across a level-4 boundary
    (2, 0xFFFF_FFFF_FFA0_0000, 3),
    (3, GIB, 1),
    (3, va_of(1) - 2 * GIB, 5),  # across a level-4 boundary
    (3, va_of(300, 510), 2),
    (3, 0xFFFF_FFFF_8000_0000, 2),
]
RANGE_IDS = [f"{['4K', '2M', '1G'][lv - 1]}-{va:#x}x{n}" for lv, va, n in RANGES]
# the same at 5 levels: 48-bit ranges as they are, then ranges only 5-level paging reaches:
# across a level-5 boundary, up to the last page below the 57-bit hole, in the upper half
RANGES57 = [
    *((levels, va, n) for levels, va, n in RANGES),
    (1, va_of(0, p5=1) - 5 * 4096, 9),
    (1, 0x00FF_FFFF_FFFF_D000, 3),
    (1, va_of(3, 1, 2, 3, p5=256), 700),
    (2, va_of(0, p5=2) - 4 * (1 << 21), 600),
    (3, va_of(0, p5=300) - 2 * GIB, 4),
    (3, 0x00FF_FFFF_8000_0000, 2),
]
RANGE57_IDS = [f"{['4K', '2M', '1G'][lv - 1]}-{va:#x}x{n}" for lv, va, n in RANGES57]


def existing_neighbours(level: int, va: int, count: int) -> Callable[[Env], None]:
    """A setup with some parents of the range already there: 4 KiB pages mapped next to the
    range (just below it, and 2 GiB further up), with table flags that the range's flags must
    be OR'ed into."""
    end = va + count * STEP[level]
    near = [(va - 4096) % (1 << 64), (va + (2 << 30) + 4096) % (1 << 64)]
    # (canonical at 57 bits: at 4 levels only the 48-bit ones are used)
    near = [n for n in near if VirtAddr57.new_truncate(n)._v == n and not va <= n < end]

    def setup(e: Env) -> None:
        addr = e.mapper.depth.addr_type
        for n in near:
            if addr.new_truncate(n)._v != n:
                continue
            page = page_class(e.levels, 1).from_start_address(addr(n))
            e.mapper.map_to_with_table_flags(
                page, frame4k(0x7000_0000), P | NX, P | F.BIT_9, e.alloc
            ).ignore()

    return setup


FLAG_CASES = pytest.mark.parametrize(
    ("flags", "parent"),
    [(P | W, None), (P | W | U | NX, None), (P | NX | F.GLOBAL, P | W | U | F.BIT_9 | NX)],
    ids=["pw", "pwu-nx", "table-flags"],
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("level", "va", "count"), RANGES, ids=RANGE_IDS)
@FLAG_CASES
def test_memory_equals_a_map_to_loop(
    kind: str, level: int, va: int, count: int, flags: F, parent: F | None
) -> None:
    """Byte for byte the loop's memory and allocations, on an empty hierarchy and on one whose
    parents partly exist (with other flags), for every size, with and without table flags."""
    _equals_the_loop(kind, level, va, count, flags, parent, 4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("level", "va", "count"), RANGES57, ids=RANGE57_IDS)
@FLAG_CASES
def test_memory_equals_a_map_to_loop_at_5_levels(
    kind: str, level: int, va: int, count: int, flags: F, parent: F | None
) -> None:
    """L5-11: the same at 5 levels, also for ranges beyond 48 bits, across level-5 boundaries
    and up to the last page below the 57-bit hole."""
    _equals_the_loop(kind, level, va, count, flags, parent, 5)


def _equals_the_loop(
    kind: str, level: int, va: int, count: int, flags: F, parent: F | None, levels: int
) -> None:
    frame = 0x12_3456 * STEP[level] & ((1 << 46) - 1)
    for setup in (lambda e: None, existing_neighbours(level, va, count)):
        case = Case(kind, level, va, count, frame, int(flags), parent and int(parent), setup)
        case.levels = levels
        case.inclusive = True
        assert check_against_loop(case) == "mapped"
        end = va + count * STEP[level]
        if end < 1 << 64 and canonicalize(end, levels) == end:  # (an exclusive end exists)
            case.inclusive = False
            assert check_against_loop(case) == "mapped"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_translate_after_map_range(kind: str, level: int) -> None:
    """Each page translates to its own frame with the leaf flags (HUGE_PAGE for huge pages)."""
    step = STEP[level]
    va = va_of(3, 7, 9, 11) & ~(step - 1)
    case = Case(kind, level, va, 600, 0x40_0000_0000, int(P | W | NX))
    e = case.env()
    e.mapper.map_range(case.pages(), case.first_frame(), P | W | NX, e.alloc).flush_all()
    for k in (0, 1, 255, 511, 512, 599):
        result = e.mapper.translate(VirtAddr(va + k * step + 0x123))
        assert isinstance(result, Mapped)
        assert result.frame.start_address() == PhysAddr(0x40_0000_0000 + k * step)
        assert result.offset == 0x123
        assert result.flags == (P | W | NX | (H if level > 1 else 0))
    assert e.mapper.translate_addr(VirtAddr(va + 600 * step)) is None
    assert e.mapper.translate_addr(VirtAddr(va - step)) is None


def test_returns_one_flush_all_for_the_mapper_tlb() -> None:
    e = support.make_env("offset")
    token = e.mapper.map_range(
        Page.range(page4k(0x1000), page4k(0x9000)), frame4k(0x10_0000), P | W, e.alloc
    )
    assert isinstance(token, MapperFlushAll)
    assert e.mapper.tlb.log == []
    token.flush_all()
    assert e.mapper.tlb.log == [("flush_all", None)]


def test_leaf_flags_overlapping_the_address_field_are_refused_like_map_to() -> None:
    """The crate ORs flag bits in the address field into each frame (MP-11); kvmpage's map_to
    refuses them before changing anything (docs/divergences.md), and map_range the same."""
    for level, flags in ((1, 0x5000 | int(P)), (2, 0x1000 | int(P)), (2, 0x40_0000 | int(P))):
        for kind in KINDS:
            case = Case(kind, level, 0x4000_0000, 40, 0x1_0000_0000, flags)
            assert check_against_loop(case) == "conflict"
            e = case.env()
            with pytest.raises(ValueError, match="address field"):
                run_map_range_raising(e, case)


# -- conflicts: checked first, nothing written ---------------------------------------------------


def map_4k(va: int, frame: int = 0x6000_0000) -> Callable[[Env], None]:
    return lambda e: e.map(page4k(va), frame4k(frame), P | W)


def map_2m(va: int) -> Callable[[Env], None]:
    return lambda e: e.map(page2m(va), support.frame2m(0x4000_0000), P | W)


def both(*setups: Callable[[Env], None]) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        for s in setups:
            s(e)

    return setup


@pytest.mark.parametrize("kind", KINDS)
def test_page_already_mapped_is_raised_first_for_the_first_mapped_page(kind: str) -> None:
    """Two mapped pages inside the range, past a level-4 boundary: the error names the first
    one's requested frame (as map_to would), and nothing was written or allocated although
    the loop would have created tables and mapped 1005 pages first."""
    va = va_of(1) - 1000 * 4096
    setup = both(map_4k(va_of(1, 0, 0, 50)), map_4k(va_of(1, 0, 0, 5)))
    case = Case(kind, 1, va, 1100, 0x8_0000_0000, setup=setup)
    assert check_against_loop(case) == "conflict"
    e = case.env()
    before, tables = bytes(e.memory._buf), len(e.alloc.allocated)
    with pytest.raises(PageAlreadyMapped) as ei:
        e.mapper.map_range(case.pages(), case.first_frame(), P | W, e.alloc)
    assert ei.value.frame == frame4k(0x8_0000_0000 + 1005 * 4096)
    assert bytes(e.memory._buf) == before
    assert len(e.alloc.allocated) == tables


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "setup",
    [
        map_2m(va_of(0, 2, 3)),  # a 2 MiB page over the range's 4 KiB pages: ParentEntryHugePage
        both(map_4k(va_of(0, 2, 3, 9)), lambda e: e.set_entry(va_of(0, 2, 3, 9), 1, F.BIT_11)),
        both(map_2m(va_of(0, 2, 3)), map_4k(va_of(0, 2, 1))),
    ],
    ids=["huge-parent", "os-bit-leaf", "leaf-before-huge"],  # MP-10, MP-09
)
def test_conflicts_of_4k_ranges(kind: str, setup: Callable[[Env], None]) -> None:
    """The huge parent gets the table flags OR'ed in by the loop before it fails (MP-05): not
    by map_range, which writes nothing."""
    case = Case(kind, 1, va_of(0, 2, 0, 500), 2000, 0x1000_0000, int(P | W | U), setup=setup)
    assert check_against_loop(case) == "conflict"


@pytest.mark.parametrize("kind", KINDS)
def test_conflicts_of_huge_ranges(kind: str) -> None:
    """2 MiB pages over a 1 GiB page and over a level-1 table (MP-07: already mapped); 1 GiB
    pages over a level-2 table."""
    one_gib = lambda e: e.map(  # noqa: E731
        support.page1g(va_of(0, 5)), support.frame1g(0x4000_0000), P | W
    )
    cases = [
        Case(kind, 2, va_of(0, 4, 500), 30, 0, setup=one_gib),
        Case(kind, 2, va_of(0, 4, 500), 30, 0, setup=map_4k(va_of(0, 4, 510, 3))),
        Case(kind, 3, va_of(0, 1), 10, 0, setup=map_4k(va_of(0, 7, 510, 3))),
    ]
    for case in cases:
        assert check_against_loop(case) == "conflict"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_argument_panics_come_first_without_allocating(kind: str, level: int) -> None:
    """Errors that map_to raises only after taking a table frame (HUGE_PAGE in the table flags;
    a missing PRESENT in them on the mapped and offset mappers, #554) or after creating the
    parents (HUGE_PAGE in 4 KiB flags) come before any allocation in map_range."""
    va = va_of(2, 3, 4, 5) & ~(STEP[level] - 1)
    cases = [Case(kind, level, va, 3, 0, int(P | W), int(P | W | H))]
    if level == 1:
        cases.append(Case(kind, level, va, 3, 0, int(P | W | H)))
    if kind != "recursive":
        cases.append(Case(kind, level, va, 3, 0, int(W)))  # parents get W only
        cases.append(Case(kind, level, va, 3, 0, int(P | W), int(W | U)))
    for case in cases:
        assert check_against_loop(case) == "conflict"
        e = case.env()
        with pytest.raises(Panic):
            e.mapper.map_range(case.pages(), case.first_frame(), case.flags, e.alloc, case.parent)
        assert e.alloc.allocated == []
    # with the parents already there, HUGE_PAGE in the table flags is OR'ed into them: the loop
    # fails with ParentEntryHugePage, having written it; map_range has not
    setup = map_4k(va_of(2, 3, 0, 0))
    case = Case(kind, level, va, 3, 0, int(P | W), int(P | W | H), setup)
    assert check_against_loop(case) == "conflict"


@pytest.mark.parametrize("kind", ["mapped", "offset"])
def test_without_present_existing_parents_are_fine(kind: str) -> None:
    """MP-05: flags without PRESENT only panic where a table must be created."""
    setup = map_4k(0x1000)
    assert check_against_loop(Case(kind, 1, 0x2000, 600, 0, int(W | U), setup=setup)) == "conflict"
    assert check_against_loop(Case(kind, 1, 0x2000, 500, 0, int(W | U), setup=setup)) == "mapped"


def test_parent_outside_memory_is_the_loops_error() -> None:
    """An existing parent pointing outside the memory: PhysMemoryError, as map_to raises it."""
    for kind in KINDS:
        setup = both(map_4k(0x1000), lambda e: e.set_entry(va_of(0, 0, 1), 2, 0x7F_0000 | int(P)))
        case = Case(kind, 1, 0x10_0000, 600, 0, setup=setup)
        assert check_against_loop(case) == "conflict"
        e = case.env()
        with pytest.raises(PhysMemoryError):
            e.mapper.map_range(case.pages(), case.first_frame(), P | W, e.alloc)


def test_recursive_non_present_parent_faults_or_gets_present() -> None:
    """R-10 / MP-05: a non-zero, non-present parent. When the table flags add PRESENT, the loop
    reaches the table it names (map_range sees the parent as the loop will have OR'ed it);
    without, resolving the child's recursive address faults, and map_range raises that fault."""
    table = 0x20_0000  # outside the allocator's range

    def setup(e: Env) -> None:
        e.map(page4k(0x1000), frame4k(0x9000))
        e.set_entry(va_of(0, 3), 3, table | int(W))

    for kind in KINDS:
        assert check_against_loop(Case(kind, 1, va_of(0, 3, 1), 700, 0, setup=setup)) == "mapped"
    case = Case("recursive", 1, va_of(0, 3, 1), 700, 0, int(P | W), int(U), setup)
    assert check_against_loop(case) == "conflict"
    e = case.env()
    with pytest.raises(SoftPageFault) as ei:
        e.mapper.map_range(case.pages(), case.first_frame(), P | W, e.alloc, U)
    assert ei.value.level == 1


# -- the allocator running out -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("limit", [0, 1, 2, 3, 4, 5, 7])
def test_allocator_running_out_leaves_the_loops_state(kind: str, limit: int) -> None:
    """FrameAllocationFailed midway: the pages before stay mapped and the tables created for
    the page that failed stay linked, exactly as the loop leaves them; pages_mapped says how
    many pages were mapped."""
    # 4 KiB pages over three level-1 tables and two level-2 tables, some parents existing
    # 88 + 512 pages below 1 GiB (two new level-1 tables), 512 + 88 above (a new level-2
    # table and two level-1 tables)
    case = Case(kind, 1, va_of(0, 1) - 600 * 4096, 1200, 0x10_0000, setup=map_4k(0x1000))
    assert check_against_loop(case, limit) == ("partial" if limit < 5 else "mapped")
    e = case.env()
    alloc = allocator(e, limit)
    if limit < 5:
        with pytest.raises(FrameAllocationFailed) as ei:
            e.mapper.map_range(case.pages(), case.first_frame(), P | W, alloc)
        assert ei.value.pages_mapped == {0: 0, 1: 88, 2: 600, 3: 600, 4: 1112}[limit]


@pytest.mark.parametrize("level", [2, 3])
def test_allocator_running_out_huge(level: int) -> None:
    """1030 pages from one table before a level-4 (2 MiB: level-3) boundary: 5 tables for
    2 MiB pages (two level-3, three level-2), 3 level-3 tables for 1 GiB pages."""
    needed = {2: 5, 3: 3}[level]
    for kind in KINDS:
        for limit in range(needed + 1):
            case = Case(kind, level, va_of(2) - 512 * STEP[level], 1030, 0)
            assert check_against_loop(case, limit) == ("partial" if limit < needed else "mapped")


def test_map_to_leaves_pages_mapped_unset() -> None:
    e = support.make_env("offset")
    with pytest.raises(FrameAllocationFailed) as ei:
        e.mapper.map_to(page4k(0x1000), frame4k(0), P, allocator(e, 0))
    assert ei.value.pages_mapped is None


class HandsOutAHugeFrame:
    """An allocator that gives two good frames, then a 2 MiB frame (FA-03: TypeError)."""

    def __init__(self) -> None:
        self.frames = [frame4k(0x2000), frame4k(0x3000), frame4k(0x4000)]

    def allocate_frame(self) -> Any:
        return self.frames.pop(0) if self.frames else support.frame2m(0x20_0000)


def test_other_errors_once_writing_began_carry_pages_mapped() -> None:
    e = support.make_env("offset")
    with pytest.raises(TypeError) as ei:
        e.mapper.map_range(
            Page.range(page4k(0x1F_F000), page4k(0x20_2000)), frame4k(0), P, HandsOutAHugeFrame()
        )
    assert ei.value.pages_mapped == 1  # type: ignore[attr-defined]
    assert e.mapper.translate_addr(VirtAddr(0x1F_F000)) == PhysAddr(0)


# -- arguments -----------------------------------------------------------------------------------


@pytest.fixture
def env() -> Env:
    return support.make_env("offset")


def test_sizes_must_match(env: Env) -> None:
    pages = Page.range(page4k(0), page4k(0x3000))
    with pytest.raises(TypeError, match="cannot map a 4KiB page to a 2MiB frame"):
        env.mapper.map_range(pages, support.frame2m(0), P, env.alloc)
    with pytest.raises(TypeError, match="expected a PageRange or PageRangeInclusive"):
        env.mapper.map_range([page4k(0)], frame4k(0), P, env.alloc)
    with pytest.raises(TypeError, match="expected a PhysFrame"):
        env.mapper.map_range(pages, PhysAddr(0), P, env.alloc)


def test_bad_flags_and_ranges_raise_value_error(env: Env) -> None:
    before = bytes(env.memory._buf)
    pages = Page.range(page4k(0), page4k(0x3000))
    with pytest.raises(ValueError, match="do not fit in 64 bits"):
        env.mapper.map_range(pages, frame4k(0), 1 << 64, env.alloc)
    with pytest.raises(ValueError, match="do not fit in 64 bits"):
        env.mapper.map_range(pages, frame4k(0), P, env.alloc, -1)
    with pytest.raises(ValueError, match="address field"):
        env.mapper.map_range(pages, frame4k(0), P, env.alloc, P | 0x1000)
    top: PhysFrame[Size4KiB] = PhysFrame.from_start_address(PhysAddr((1 << 52) - 0x2000))
    with pytest.raises(ValueError, match="run past the 52-bit physical address space"):
        env.mapper.map_range(pages, top, P, env.alloc)
    across = Page.range(page4k(0x7FFF_FFFF_F000), page4k(0xFFFF_8000_0000_1000))
    with pytest.raises(ValueError, match="crosses the non-canonical hole"):
        env.mapper.map_range(across, frame4k(0), P, env.alloc)
    assert bytes(env.memory._buf) == before
    assert env.alloc.allocated == []
    # the last two frames below 2**52 are fine
    env.mapper.map_range(Page.range(page4k(0), page4k(0x2000)), top, P | W, env.alloc).flush_all()
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr((1 << 52) - 0x1000)


def test_the_last_page_below_the_hole_is_mapped(env: Env) -> None:
    """Iterating a range that ends at the last page below the hole panics (P-17, the crate's
    Page + 1); map_range maps every page of it."""
    last = page4k(0x7FFF_FFFF_F000)
    env.mapper.map_range(
        Page.range_inclusive(last - 2, last), frame4k(0x5000), P, env.alloc
    ).flush_all()
    assert env.mapper.translate_addr(VirtAddr(0x7FFF_FFFF_F123)) == PhysAddr(0x7123)


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_range_maps_nothing(kind: str) -> None:
    e = support.make_env(kind)
    before = bytes(e.memory._buf)
    for pages in (
        Page.range(page4k(0x5000), page4k(0x5000)),
        Page.range(page4k(0x5000), page4k(0x1000)),
        Page.range_inclusive(page4k(0x5000), page4k(0x4000)),
    ):
        token = e.mapper.map_range(pages, frame4k(0), P | W | H, e.alloc, P | H)
        assert isinstance(token, MapperFlushAll)
        token.flush_all()
    assert bytes(e.memory._buf) == before
    assert e.alloc.allocated == []
    with pytest.raises(TypeError):  # arguments are still checked
        e.mapper.map_range(Page.range(page4k(0), page4k(0)), support.frame2m(0), P, e.alloc)


def test_recursive_needs_its_entry_pointing_back() -> None:
    """Without entry r the first map_to faults: map_range raises the same fault. With entry r
    leading to another self-mapped table, map_range refuses (ValueError), writing nothing."""
    memory = PhysMemory(MEM_SIZE)
    m = RecursivePageTable.new_unchecked(memory, R, frame4k(P4_PHYS))
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(ALLOC_START, ALLOC_END, memory=memory)
    pages = Page.range(page4k(0x1000), page4k(0x3000))
    with pytest.raises(SoftPageFault) as ei:
        m.map_range(pages, frame4k(0), P | W, alloc)
    with pytest.raises(SoftPageFault) as ej:
        m.map_to(page4k(0x1000), frame4k(0), P | W, alloc)
    assert str(ei.value) == str(ej.value)
    memory.write_u64(P4_PHYS + 8 * R, 0x20_0000 | int(P | W))
    memory.write_u64(0x20_0000 + 8 * R, 0x20_0000 | int(P | W))
    before = bytes(memory._buf)
    with pytest.raises(ValueError, match="entry 510 of the level-4 table at 0x1000"):
        m.map_range(pages, frame4k(0), P | W, alloc)
    assert bytes(memory._buf) == before


# -- tables that alias each other: checked page by page ------------------------------------


def alias(level: int, va_b: int) -> Callable[[Env], None]:
    """An empty leaf table for pages of ``level`` at address 0 (a page mapped and unmapped),
    and the entry above it copied to the walk of ``va_b``: two entries lead to that table."""

    def setup(e: Env) -> None:
        page = PAGE[level].from_start_address(VirtAddr(0))
        e.map(page, FRAME[level].from_start_address(PhysAddr(0)))
        e.mapper.unmap(page)[1].ignore()
        e.set_entry(va_b, level + 1, e.entry(0, level + 1))

    return setup


ALIASED = [
    (1, va_of(0, 0, 2)),  # level-2 entries 0 and 2 lead to one level-1 table
    (2, va_of(0, 2)),  # level-3 entries 0 and 2 lead to one level-2 table
    (3, va_of(2)),  # level-4 entries 0 and 2 lead to one level-3 table
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("level", "va_b"), ALIASED, ids=["4K", "2M", "1G"])
def test_aliased_tables_conflict_through_the_loops_own_writes(
    kind: str, level: int, va_b: int
) -> None:
    """The loop maps 512 pages into the shared table through the first entry, then meets them
    again through the second: PageAlreadyMapped for page 1024, which no entry shows before
    the call. map_range notices the table at a second place of the tree and replays its check
    page by page: the same error, nothing written. Stopping short of it maps like the loop."""
    assert check_against_loop(Case(kind, level, 0, 1025, 0, setup=alias(level, va_b))) == "conflict"
    assert check_against_loop(Case(kind, level, 0, 1024, 0, setup=alias(level, va_b))) == "mapped"


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 3, 700])
def test_mapping_inside_a_recursive_slot(level: int, count: int) -> None:
    """A level-4 table with a recursive entry (the recursive mapper's, or a second view for
    the mapped and offset mappers, as in the built-in layout): pages mapped inside that slot
    are the tables themselves, so the loop's own writes change what it walks. Same as the loop
    all the same (map_range checks such a range page by page)."""

    def setup(e: Env) -> None:
        e.memory.write_u64(P4_PHYS + 8 * R, P4_PHYS | int(P | W))
        e.map(page4k(va_of(3, 2, 1)), frame4k(0x6000_0000))

    outcomes = set()
    for va in (va_of(R), va_of(R, 3), va_of(R, R, 3), va_of(R, R, R, 0), va_of(R, 2, R)):
        va &= ~(STEP[level] - 1)
        n = min(count, ((1 << 64) - va) // STEP[level])
        for kind in KINDS:
            case = Case(kind, level, va, n, 0x8000_0000, setup=setup, inclusive=True)
            outcomes.add(check_against_loop(case))
    assert "mapped" in outcomes or count == 700  # 700: through the slot's used entries


def test_aliased_ranges_use_the_slow_check_and_plain_ones_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    slow = map_range_module._check_range_slowly

    def spy(mapper: TableMapper, *args: Any) -> None:
        calls.append(args[0])
        slow(mapper, *args)

    monkeypatch.setattr(map_range_module, "_check_range_slowly", spy)
    for kind in KINDS:
        plain = Case(kind, 1, va_of(0, 1) - 600 * 4096, 1200, 0, setup=map_4k(0x1000))
        assert check_against_loop(plain) == "mapped"
    assert calls == []
    case = Case("offset", 2, 0, 1025, 0, setup=alias(2, va_of(0, 2)))
    assert check_against_loop(case) == "conflict"
    assert calls


# -- the entries of one leaf table ---------------------------------------------------------------


def test_ramp_is_the_arithmetic_sequence() -> None:
    rng = random.Random(1)
    for step in (1 << 12, 1 << 21, 1 << 30):
        for _ in range(200):
            count = rng.randrange(1, 513)
            flags = rng.choice([0, int(P | W), int(P | NX), int(P | W | H | NX | F.BIT_62)])
            top = (1 << 52) - count * step
            first = (rng.randrange(0, top) & ~(step - 1)) | flags
            got = map_range_module._ramp(first, step, count)
            assert got.tolist() == list(range(first, first + count * step, step))
            assert array("Q", got.tobytes()).tolist() == got.tolist()


# -- random cases (Hypothesis) -------------------------------------------------------------------

# A small universe so that ranges start and end anywhere near table boundaries and the setup's
# mappings and raw edits get in their way. Index 510 (the recursive entry) is never edited:
# map_range refuses a recursive mapper without it, and the loop maps through another table.
P4S = (0, 1, 255, 256, 511)
P5S = (0, 1, 255, 256, 511)  # (at 5 levels; the recursive entry is the level-5 table's 510)
LOWER = (0, 1, 2, 511)
LEAF_FLAG_BITS = [W, U, NX, F.GLOBAL, F.BIT_9, F.BIT_52]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Case, int | None]:
    kind = draw(st.sampled_from(KINDS))
    levels = draw(st.sampled_from((4, 5)))
    level = draw(st.sampled_from((1, 1, 2, 3)))
    step = STEP[level]
    addr_type = addr_class(levels)

    def some_va(lvl: int) -> int:
        p5 = draw(st.sampled_from(P5S)) if levels == 5 else None
        p4 = draw(st.sampled_from(P4S))
        p3, p2, p1 = (draw(st.sampled_from(LOWER)) if lvl <= n else 0 for n in (3, 2, 1))
        return va_of(p4, p3, p2, p1, p5=p5)

    def flags(present: float) -> int:
        f = int(P) if draw(st.floats(0, 1)) < present else 0
        for bit in draw(st.lists(st.sampled_from(LEAF_FLAG_BITS), max_size=3)):
            f |= int(bit)
        return f | (int(H) if draw(st.integers(0, 19)) == 0 else 0)

    premapped = [
        (lvl, some_va(lvl)) for lvl in draw(st.lists(st.sampled_from((1, 1, 2, 3)), max_size=6))
    ]
    # raw edits: (level, flags, where the entry leads: 0, the level-4 table, a frame outside
    # the allocator's range, one outside memory, or (an index into) the tables the setup made)
    edits = [
        (lvl, some_va(1), f, addr)
        for lvl, f, addr in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(tuple(range(1, levels + 1))),
                    st.sampled_from((0, int(F.BIT_11), int(P | W), int(P | W | H))),
                    st.sampled_from((0, P4_PHYS, 0x20_0000, 0x7F_0000, -1, -2, -3)),
                ),
                max_size=2,
            )
        )
    ]

    def setup(e: Env) -> None:
        for lvl, va in premapped:
            page = page_class(levels, lvl).from_start_address(addr_type(va))
            frame = FRAME[lvl].from_start_address(PhysAddr(0x7_0000_0000))
            with contextlib.suppress(PageAlreadyMapped, ParentEntryHugePage):
                e.mapper.map_to(page, frame, P | W, e.alloc).ignore()
        for lvl, va, f, addr in edits:
            if addr < 0:  # a table the setup made: aliasing without breaking the allocator
                tables = e.allocated()
                addr = tables[addr % len(tables)] if tables else 0
            with contextlib.suppress(PhysMemoryError):
                e.set_entry(va, lvl, f | addr)

    start = addr_type.new_truncate((some_va(level) + draw(st.integers(-3, 3)) * step) % (1 << 64))
    va = start._v & ~(step - 1)
    hole = 1 << (9 * levels + 11)
    top = hole if va < hole else 1 << 64
    count = min(draw(st.integers(0, {1: 1100, 2: 700, 3: 600}[level])), (top - va) // step)
    # leaf frames above the allocator's range: never a frame it hands out for a table
    frame = draw(st.integers(-(-ALLOC_END // step), (1 << 40) // step)) * step
    parent = flags(0.9) if draw(st.booleans()) else None
    case = Case(kind, level, va, count, frame, flags(0.9), parent, setup, inclusive=True,
                levels=levels)  # fmt: skip
    limit = draw(st.none() | st.integers(0, 8))
    return case, limit


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_random_cases_match_the_loop(drawn: tuple[Case, int | None]) -> None:
    """Random ranges (all sizes, table flags or not, short allocators) over random worlds with
    mappings, odd entries and aliased tables in the way: always the loop's memory, or the
    loop's first error with nothing written. At 4 and 5 levels (L5-11)."""
    case, limit = drawn
    check_against_loop(case, limit)
