"""MappedPageTable and OffsetPageTable: checklist rules M-01..M-06 and MP-01..MP-30 (section 5.2).

Every shared rule runs on both mappers through the ``env`` fixture: a `MappedPageTable` with a
custom `PageTableFrameMapping` (identity, with a call log) and an `OffsetPageTable` whose tables
live at ``0xffff_8000_0000_0000 + phys``. Physical memory is 4 MiB; the level-4 table is at
0x1000 and the frame allocator hands out 0x2000, 0x3000, ... (as the checklist's probe arena).
Leaf frames are chosen by the test and need not lie inside the memory. Scenarios marked
"(verified)" in the checklist are ported with the checklist's numbers.

Flush tokens are always consumed; a dropped one fails the test (see ``pytestmark``).
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import support
from support import (
    ALLOC_END,
    ALLOC_START,
    MEM_SIZE,
    NX,
    OFFSET,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    F,
    H,
    P,
    U,
    W,
    build_mapper,
    frame1g,
    frame2m,
    frame4k,
    idx,
    mapper_op,
    page1g,
    page2m,
    page4k,
    pool_allocator,
    returned,
)

from kvmpage import Panic, PhysAddr, PhysMemory, PhysMemoryError, VirtAddr, VirtAddr57
from kvmpage.paging import (
    ADDRESS_MASK,
    CleanUp,
    FlagUpdateError,
    FrameAllocationFailed,
    InvalidFrameAddress,
    InvalidFrameAddressResult,
    InvalidPageTable,
    Mapped,
    MappedFrame,
    MappedPageTable,
    Mapper,
    MapperFlush,
    MapperFlushAll,
    MapToError,
    NotActive,
    NotMapped,
    NotRecursive,
    OffsetPageTable,
    Page,
    PageAlreadyMapped,
    PageNotMapped,
    PageRangeInclusive,
    PageTable,
    ParentEntryHugePage,
    PhysFrame,
    PoolFrameAllocator,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    TranslateError,
    TranslateResult,
    UnmapError,
)
from kvmpage.paging.page57 import PAGE_TYPES

pytestmark = STRICT_FLUSH_TOKENS


class RecordingMapping:
    """A custom `PageTableFrameMapping` (MP-01): identity into the memory, logging every call."""

    def __init__(self, memory: PhysMemory) -> None:
        self.memory = memory
        self.calls: list[PhysFrame[Size4KiB]] = []

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        self.calls.append(frame)
        return PageTable(self.memory, frame.start_address())


@dataclass
class Env(support.Env):
    mapping: RecordingMapping | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_env(kind: str, memory: PhysMemory | None = None, levels: int = 4) -> Env:
    """A "mapped" (through a `RecordingMapping`) or "offset" `Env` of ``levels`` levels."""
    memory = memory or PhysMemory(MEM_SIZE)
    alloc = pool_allocator(memory)
    if kind == "mapped":
        mapping = RecordingMapping(memory)
        mapper = build_mapper(kind, memory, mapping=mapping, levels=levels)
        return Env(kind, memory, mapper, alloc, mapping)
    if kind == "offset":
        return Env(kind, memory, build_mapper(kind, memory, levels=levels), alloc)
    raise AssertionError(kind)


@pytest.fixture(params=["mapped", "offset", "mapped-5", "offset-5"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """Both mappers at 4 levels and at 5 (the crate's rules hold one level deeper, L5-04)."""
    kind, _, levels = request.param.partition("-")
    e = make_env(kind, levels=int(levels or 4))
    yield e
    e.memory.close()


@pytest.fixture(params=["mapped", "offset"])
def env4(request: pytest.FixtureRequest) -> Iterator[Env]:
    """Both mappers at 4 levels only: for the tests that pin the crate's exact frames and table
    addresses (the level-5 table changes both; test_la57.py checks them at 5 levels)."""
    e = make_env(request.param)
    yield e
    e.memory.close()


# -- M-01..M-06: the trait-level API --------------------------------------------------------


def test_m01_mapper_methods_for_all_sizes(env: Env) -> None:
    """M-01: every Mapper method exists and accepts pages of all three sizes (MapperAllSizes);
    M-09: CleanUp methods exist; Mapper/CleanUp name the shared engine."""
    for name in (
        "map_to",
        "map_to_with_table_flags",
        "unmap",
        "update_flags",
        "set_flags_p4_entry",
        "set_flags_p3_entry",
        "set_flags_p2_entry",
        "translate_page",
        "identity_map",
        "translate",
        "translate_addr",
        "clean_up",
        "clean_up_addr_range",
    ):
        assert callable(getattr(env.mapper, name)), name
    assert isinstance(env.mapper, Mapper)
    assert isinstance(env.mapper, CleanUp)
    env.map(page4k(0x1000), frame4k(0x9000_0000))
    env.map(page2m(0x40_0000), frame2m(0x20_0000_0000))
    env.map(page1g(0x4000_0000), frame1g(0x40_0000_0000))
    assert env.mapper.translate_page(page4k(0x1000)) == frame4k(0x9000_0000)
    assert env.mapper.translate_page(page2m(0x40_0000)) == frame2m(0x20_0000_0000)
    assert env.mapper.translate_page(page1g(0x4000_0000)) == frame1g(0x40_0000_0000)


def test_m01_page_and_frame_sizes_must_match(env: Env) -> None:
    """M-01: Mapper<S> takes Page<S> with PhysFrame<S>; mixing sizes is a TypeError in Python
    (a compile error in Rust) and changes nothing."""
    with pytest.raises(TypeError):
        env.mapper.map_to(page4k(0), frame2m(0), P, env.alloc)
    assert env.alloc.allocated == []
    assert PageTable(env.memory, P4_PHYS).is_empty()


@pytest.mark.parametrize(
    "leaf_flags",
    [
        P | W | U | NX | F.NO_CACHE | F.GLOBAL | F.BIT_9 | F.BIT_52 | F.WRITE_THROUGH,
        P | NX | F.GLOBAL,
        P | U,
    ],
    ids=["all", "P|NX|G", "P|U"],
)
def test_m02_map_to_parent_flags_are_leaf_flags_cut_to_pwu(env: Env, leaf_flags: F) -> None:
    """M-02: map_to = map_to_with_table_flags(flags, flags & (P|W|U)); NO_EXECUTE, NO_CACHE,
    GLOBAL and OS bits never reach the parents."""
    va = 0x1234_5000
    env.map(page4k(va), frame4k(0x7000_0000), leaf_flags)
    expected_parent = int(leaf_flags) & int(P | W | U)
    for level in (4, 3, 2):
        assert env.entry(va, level) & ~ADDRESS_MASK == expected_parent, level
    assert env.entry(va, 1) == 0x7000_0000 | int(leaf_flags)


def test_m03_identity_map_maps_frame_at_equal_address(env: Env) -> None:
    """M-03: identity_map(frame) maps Page::containing_address(frame.start) for all sizes."""
    env.mapper.identity_map(frame4k(0x5000), P | W, env.alloc).ignore()
    env.mapper.identity_map(frame2m(0x60_0000), P | W, env.alloc).ignore()
    env.mapper.identity_map(frame1g(0x8000_0000), P, env.alloc).ignore()
    assert env.mapper.translate_addr(VirtAddr(0x5123)) == PhysAddr(0x5123)
    assert env.mapper.translate_addr(VirtAddr(0x61_2345)) == PhysAddr(0x61_2345)
    assert env.mapper.translate_addr(VirtAddr(0x8765_4321)) == PhysAddr(0x8765_4321)


@pytest.mark.parametrize(
    "frame",
    [frame4k(0x8000_0000_0000), frame2m(0x8000_0000_0000), frame1g(0xF_FFFF_C000_0000)],
    ids=["4KiB", "2MiB", "1GiB"],
)
def test_m03_identity_map_panics_above_2_pow_47(env4: Env, frame: Any) -> None:
    """M-03 (verified with 0x8000_0000_0000): a physical address >= 2**47 is not a canonical
    virtual address, so identity_map panics before touching anything. (At 5 levels it is
    canonical and mapped: L5-05, test_la57.py.)"""
    with pytest.raises(Panic, match=r"^virtual address must be sign extended in bits 48 to 64"):
        env4.mapper.identity_map(frame, P | W, env4.alloc)
    assert env4.alloc.allocated == []


def test_m04_translate_addr_follows_translate(env: Env) -> None:
    """M-04: translate_addr = frame.start + offset for Mapped, None for NotMapped."""
    env.map(page4k(0x3000), frame4k(0xABC_D000))
    assert env.mapper.translate_addr(VirtAddr(0x3FFF)) == PhysAddr(0xABC_DFFF)
    assert env.mapper.translate_addr(VirtAddr(0x4000)) is None
    assert env.mapper.translate_addr(VirtAddr(0xFFFF_8000_0000_0000)) is None
    r = env.mapper.translate(VirtAddr(0x3456))
    assert isinstance(r, Mapped)
    assert env.mapper.translate_addr(VirtAddr(0x3456)) == r.frame.start_address() + r.offset


def test_m05_translate_result_shapes(env: Env) -> None:
    """M-05: Mapped{frame: MappedFrame, offset, flags} / NotMapped / InvalidFrameAddress, also
    reachable as TranslateResult.X; MappedFrame has start_address() and size()."""
    assert TranslateResult.Mapped is Mapped  # type: ignore[attr-defined]
    assert TranslateResult.NotMapped is NotMapped  # type: ignore[attr-defined]
    assert TranslateResult.InvalidFrameAddress is InvalidFrameAddressResult  # type: ignore[attr-defined]
    env.map(page4k(0x5000), frame4k(0x1234_5000), P | W | NX)
    env.map(page2m(0x20_0000), frame2m(0x4000_0000))
    env.map(page1g(0x80_0000_0000), frame1g(0x8000_0000))
    r4 = env.mapper.translate(VirtAddr(0x5ABC))
    assert r4 == Mapped(MappedFrame(frame4k(0x1234_5000)), 0xABC, P | W | NX)
    assert r4.frame.size() == 0x1000 and r4.frame.size_type is Size4KiB
    r2 = env.mapper.translate(VirtAddr(0x21_2345))
    assert isinstance(r2, TranslateResult.Mapped)  # type: ignore[attr-defined]
    assert r2.frame.size() == 0x20_0000 and r2.frame.start_address() == PhysAddr(0x4000_0000)
    r1 = env.mapper.translate(VirtAddr(0x80_1234_5678))
    assert isinstance(r1, Mapped)
    assert r1.frame.size() == 0x4000_0000 and r1.frame.size_type is Size1GiB
    assert isinstance(env.mapper.translate(VirtAddr(0x6000)), NotMapped)
    match env.mapper.translate(VirtAddr(0x5000)):
        case TranslateResult.Mapped(frame=frame, offset=0):  # type: ignore[attr-defined]
            assert frame == MappedFrame(frame4k(0x1234_5000))
        case other:
            pytest.fail(f"unexpected {other!r}")


def test_m05_translate_flags_are_the_leaf_flags_only(env: Env) -> None:
    """M-05 / I-02 (#534): translate's flags are the leaf's; parents' restrictions are not
    merged."""
    va = 0x7000
    env.mapper.map_to_with_table_flags(
        page4k(va), frame4k(0x9000), P | W | U, P, env.alloc
    ).ignore()
    assert env.entry(va, 4) & ~ADDRESS_MASK == int(P)
    r = env.mapper.translate(VirtAddr(va))
    assert isinstance(r, Mapped) and r.flags == P | W | U


def test_m06_error_families_and_payloads() -> None:
    """M-06: error variants with the crate's names; a shared variant derives from every family
    that has it; payloads .frame / .addr; none is a Panic."""
    assert issubclass(FrameAllocationFailed, MapToError)
    assert issubclass(PageAlreadyMapped, MapToError)
    for fam in (MapToError, UnmapError, FlagUpdateError, TranslateError):
        assert issubclass(ParentEntryHugePage, fam)
    for fam in (UnmapError, FlagUpdateError, TranslateError):
        assert issubclass(PageNotMapped, fam)
    assert not issubclass(PageNotMapped, MapToError)
    assert issubclass(InvalidFrameAddress, UnmapError)
    assert issubclass(InvalidFrameAddress, TranslateError)
    assert not issubclass(InvalidFrameAddress, FlagUpdateError)
    assert not issubclass(FrameAllocationFailed, UnmapError)
    assert issubclass(NotRecursive, InvalidPageTable) and issubclass(NotActive, InvalidPageTable)
    for cls in (FrameAllocationFailed, ParentEntryHugePage, PageNotMapped, NotRecursive):
        assert not issubclass(cls, Panic)
    e = PageAlreadyMapped(frame4k(0x2000))
    assert e.frame == frame4k(0x2000)
    assert InvalidFrameAddress(PhysAddr(0x1000)).addr == PhysAddr(0x1000)
    assert str(NotRecursive()) == "given page table address is not recursive"
    assert str(NotActive()) == "given page table is not active on the CPU"


# -- MP-01, MP-02: structure -------------------------------------------------------------------


def test_mp01_custom_frame_mapping_and_getters() -> None:
    """MP-01: MappedPageTable reaches every child table through frame_to_pointer of the custom
    PageTableFrameMapping; getters level_4_table() and page_table_frame_mapping()."""
    e = make_env("mapped")
    assert e.mapping is not None
    assert e.mapper.page_table_frame_mapping() is e.mapping
    l4 = e.mapper.level_4_table()
    assert isinstance(l4, PageTable) and l4.phys == P4_PHYS
    e.map(page4k(0x1000), frame4k(0x5_0000_0000))
    assert [int(f.start_address()) for f in e.mapping.calls] == [0x2000, 0x3000, 0x4000]
    e.mapping.calls.clear()
    assert e.mapper.translate_addr(VirtAddr(0x1008)) == PhysAddr(0x5_0000_0008)
    assert [int(f.start_address()) for f in e.mapping.calls] == [0x2000, 0x3000, 0x4000]


def test_mp01_mapping_may_place_tables_elsewhere() -> None:
    """MP-01: the mapping decides where a table frame's contents are; the mapper never reads a
    child table at its physical address directly."""
    memory = PhysMemory(MEM_SIZE)
    shadow = PhysMemory(MEM_SIZE)

    class Shadow:
        def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
            return PageTable(shadow, frame.start_address())

    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(ALLOC_START, ALLOC_END)
    m = MappedPageTable(PageTable(memory, P4_PHYS), Shadow())
    m.map_to(page4k(0x1000), frame4k(0x7_0000), P | W, alloc).ignore()
    assert memory.read_u64(P4_PHYS) == 0x2000 | int(P | W)  # the level-4 table itself
    assert memory.read_u64(0x2000) == 0 and shadow.read_u64(0x2000) == 0x3000 | int(P | W)
    assert m.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x7_0000)


def test_mp01_mapping_into_a_larger_memory() -> None:
    """MP-01: the mapping may hold tables in another memory than the level-4 table's, at frames
    beyond that memory's size; creating them must not be refused by a check against the
    level-4 table's memory (fixed in mapped.py / base.py)."""
    small = PhysMemory(0x2000)
    big = PhysMemory(0x80_0000)

    class Elsewhere:
        def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
            return PageTable(big, frame.start_address())

    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x40_0000, 0x50_0000)
    m = MappedPageTable(PageTable(small, P4_PHYS), Elsewhere())
    m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc).ignore()
    assert small.read_u64(P4_PHYS) == 0x40_0000 | int(P | W)
    assert big.read_u64(0x40_0000) == 0x40_1000 | int(P | W)
    assert m.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)
    _, tok = m.unmap(page4k(0x1000))
    tok.ignore()
    m.clean_up(alloc)
    assert [int(f.start_address()) for f in alloc.deallocated] == [0x40_2000, 0x40_1000, 0x40_0000]


@pytest.mark.parametrize("kind", ["mapped", "offset"])
def test_mp04_table_frame_outside_memory(kind: str) -> None:
    """MP-04 / FA-01: an allocator that breaks its contract with a frame the mapper cannot reach
    gives PhysMemoryError. MappedPageTable trusts its mapping like the crate, so the entry is
    linked before frame_to_pointer fails; OffsetPageTable refuses the frame before linking."""
    e = make_env(kind)
    bad: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(MEM_SIZE, MEM_SIZE + 0x1000)
    with pytest.raises(PhysMemoryError):
        e.mapper.map_to(page4k(0x1000), frame4k(0x9000), P | W, bad)
    assert e.memory.read_u64(P4_PHYS) == (MEM_SIZE | int(P | W) if kind == "mapped" else 0)


def test_mp02_offset_page_table_phys_offset() -> None:
    """MP-02: OffsetPageTable(l4, offset).phys_offset(); it behaves as a MappedPageTable."""
    e = make_env("offset")
    assert e.mapper.phys_offset() == VirtAddr(OFFSET)
    assert isinstance(e.mapper, MappedPageTable)
    assert e.mapper.level_4_table().phys == P4_PHYS


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0x7FFF_FFFF_F000, r"^attempt to add resulted in non-canonical virtual address"),
        (0xFFFF_FFFF_FFFF_F000, r"^attempt to add with overflow"),
    ],
    ids=["non-canonical", "overflow"],
)
def test_mp02_offset_plus_phys_panics_like_virtaddr_add(offset: int, message: str) -> None:
    """MP-02 / I-20 (#290): the table address offset + phys uses VirtAddr `+`, so a sum that is
    not canonical or overflows panics, in map_to, translate and translate_addr."""
    memory = PhysMemory(MEM_SIZE)
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(ALLOC_START, ALLOC_END)
    m = OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(offset))
    with pytest.raises(Panic, match=message):
        m.map_to(page4k(0x1000), frame4k(0x7_0000), P | W, alloc)
    # the level-4 entry was linked before the child was reached (no rollback, MP-05)
    assert memory.read_u64(P4_PHYS) == 0x2000 | int(P | W)
    with pytest.raises(Panic, match=message):
        m.translate(VirtAddr(0x1000))
    with pytest.raises(Panic, match=message):
        m.translate_addr(VirtAddr(0x1000))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0x7FFF_FFFF_0000, r"^attempt to add resulted in non-canonical virtual address"),
        (0xFFFF_FFFF_FFFF_0000, r"^attempt to add with overflow"),
    ],
    ids=["non-canonical", "overflow"],
)
def test_mp02_offset_boundary_is_exact(offset: int, message: str) -> None:
    """MP-02: with offset + 0x1_0000 the first bad table address, tables at 0xe000 and 0xf000
    work and the one at 0x1_0000 panics, in the general and the fast paths alike."""
    memory = PhysMemory(MEM_SIZE)
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0xE000, 0x2_0000)
    m = OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(offset))
    m.map_to(page2m(0x20_0000), frame2m(0x4000_0000), P | W, alloc).ignore()  # P3 e000, P2 f000
    assert m.translate_addr(VirtAddr(0x20_0001)) == PhysAddr(0x4000_0001)
    assert m.translate(VirtAddr(0x20_0001)) == Mapped(
        MappedFrame(frame2m(0x4000_0000)), 1, P | W | H
    )
    with pytest.raises(Panic, match=message):
        m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc)  # P1 at 0x1_0000
    assert memory.read_u64(0xF000) == 0x1_0000 | int(P | W)
    for op in (m.translate, m.translate_addr):
        with pytest.raises(Panic, match=message):
            op(VirtAddr(0x1000))
    with pytest.raises(Panic, match=message):
        m.map_to(page4k(0x2000), frame4k(0x9000), P | W, alloc)


# -- MP-03, MP-04: the walker and create_next_table ---------------------------------------------


def test_mp03_walk_errors_map_to_each_family(env: Env) -> None:
    """MP-03: a non-present parent is PageNotMapped, a huge parent ParentEntryHugePage, in unmap,
    update_flags and translate_page; translate says NotMapped / Mapped."""
    p = page4k(0x40_1000)
    ops: tuple[Callable[[], object], ...] = (
        lambda: env.mapper.unmap(p),
        lambda: env.mapper.update_flags(p, P),
        lambda: env.mapper.translate_page(p),
    )
    for op in ops:
        with pytest.raises(PageNotMapped):
            op()
    env.map(page2m(0x40_0000), frame2m(0x20_0000))
    with pytest.raises(ParentEntryHugePage) as ei:
        env.mapper.unmap(p)
    assert isinstance(ei.value, UnmapError)
    with pytest.raises(ParentEntryHugePage) as ej:
        env.mapper.update_flags(p, P)
    assert isinstance(ej.value, FlagUpdateError)
    with pytest.raises(ParentEntryHugePage) as ek:
        env.mapper.translate_page(p)
    assert isinstance(ek.value, TranslateError)


def test_mp04_new_parent_gets_exactly_the_insert_flags(env: Env) -> None:
    """MP-04.1: a new parent entry gets exactly parent_table_flags (no automatic WRITABLE)."""
    va = 0x20_3000
    flags = P | F.BIT_9 | F.GLOBAL | NX
    env.mapper.map_to_with_table_flags(
        page4k(va), frame4k(0x6000_0000), P, flags, env.alloc
    ).ignore()
    for level in range(env.levels, 1, -1):  # (the level-5 entry too, at 5 levels)
        assert env.entry(va, level) == env.table(4 - level) | int(flags)
    assert env.entry(va, 1) == 0x6000_0000 | int(P)


def test_mp04_new_tables_are_zeroed_after_linking(env: Env) -> None:
    """MP-04.4: a newly created child table is zeroed, whatever the frame held before."""
    for a in range(0x2000, 0x5000, 8):
        env.memory.write_u64(a, 0xDEAD_BEEF_0000_0001)
    env.map(page4k(0), frame4k(0x8000_0000))
    for table, used in ((0x2000, 0), (0x3000, 0), (0x4000, 0)):
        raws = PageTable(env.memory, table).raw_entries()
        assert [i for i, r in enumerate(raws) if r] == [used]


def test_mp04_huge_page_in_insert_flags_panics_when_creating(env: Env) -> None:
    """MP-04.1: HUGE_PAGE in parent_table_flags trips the set_frame assertion (T-08) when a
    table must be created; the frame was already taken from the allocator."""
    with pytest.raises(
        Panic, match=r"^assertion failed: !flags.contains\(PageTableFlags::HUGE_PAGE\)"
    ):
        env.mapper.map_to_with_table_flags(page4k(0), frame4k(0x9000), P, P | W | H, env.alloc)
    assert env.allocated() == [0x2000]


def test_mp04_existing_parent_flags_are_ored_address_kept(env: Env) -> None:
    """MP-04.2: an existing parent gets the insert flags OR'ed in, address preserved; flags it
    has are kept (nothing is removed)."""
    env.map(page4k(0x1000), frame4k(0x9000), P | NX | F.BIT_9)
    assert env.entry(0x1000, 4) == env.table(0) | int(P)
    env.mapper.map_to_with_table_flags(
        page4k(0x2000), frame4k(0xA000), P, P | W | U, env.alloc
    ).ignore()
    for level in range(env.levels, 1, -1):
        assert env.entry(0x2000, level) == env.table(4 - level) | int(P | W | U)
    env.map(page4k(0x3000), frame4k(0xB000), P)
    assert env.entry(0x3000, 4) == env.table(0) | int(P | W | U)
    assert env.allocated() == env.tables(3)


# -- MP-05 (verified) ---------------------------------------------------------------------------


def test_mp05_map_to_without_present_panics_after_linking_p3(env: Env) -> None:
    """MP-05 (verified) / I-06 (#554): map_to with flags lacking PRESENT on an empty hierarchy
    panics 'entry should be mapped at this point' after the P3 frame was allocated and linked
    into P4 with flags WRITABLE only."""
    with pytest.raises(Panic, match=r"^entry should be mapped at this point"):
        env.mapper.map_to(page4k(0x1000), frame4k(0x9000), W, env.alloc)
    assert env.allocated() == [0x2000]
    assert env.memory.read_u64(P4_PHYS) == 0x2000 | int(W)


def test_mp05_table_flags_without_present_panic_whenever_a_table_is_created(env: Env) -> None:
    """MP-05 (verified): map_to_with_table_flags with parent flags lacking PRESENT panics as soon
    as a table must be created, even if the leaf flags have PRESENT; with all parents already
    present it works (the OR adds nothing that removes PRESENT)."""
    with pytest.raises(Panic, match=r"^entry should be mapped at this point"):
        env.mapper.map_to_with_table_flags(page4k(0x1000), frame4k(0x9000), P | W, W | U, env.alloc)
    assert env.memory.read_u64(P4_PHYS) == 0x2000 | int(W | U)
    e2 = make_env(env.kind)
    e2.map(page4k(0x1000), frame4k(0x9000))
    e2.mapper.map_to_with_table_flags(page4k(0x2000), frame4k(0xA000), P, W | U, e2.alloc).ignore()
    assert e2.entry(0x2000, 4) == 0x2000 | int(P | W | U)
    assert e2.mapper.translate_addr(VirtAddr(0x2000)) == PhysAddr(0xA000)


def test_mp05_non_present_parent_becomes_present_and_its_address_is_a_table(env: Env) -> None:
    """MP-05: an existing non-zero non-present parent that receives PRESENT through the OR is
    treated as a table at whatever address it stored, here physical 0."""
    env.memory.write_u64(P4_PHYS, int(W))  # top[0]: address 0, WRITABLE only
    env.map(page4k(0x1000), frame4k(0x9000))
    assert env.memory.read_u64(P4_PHYS) == int(P | W)
    # the table below the top one is the frame at physical 0 (so at 5 levels the level-4
    # table is at 0, and its child the first allocated frame)
    assert env.memory.read_u64(0) == 0x2000 | int(P | W)
    assert env.allocated() == [0x2000, 0x3000, 0x4000][: env.levels - 2]
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)


def test_mp05_huge_parent_gets_flags_ored_although_map_fails(env: Env) -> None:
    """MP-05 (verified): mapping a 4KiB page with PRESENT|USER_ACCESSIBLE inside a 2MiB page
    fails with ParentEntryHugePage but leaves USER_ACCESSIBLE added to the 2MiB entry."""
    env.map(page2m(0x20_0000), frame2m(0x4000_0000), P | W)
    before = env.entry(0x20_0000, 2)
    assert before == 0x4000_0000 | int(P | W | H)
    with pytest.raises(ParentEntryHugePage):
        env.mapper.map_to(page4k(0x20_5000), frame4k(0x9000), P | U, env.alloc)
    assert env.entry(0x20_0000, 2) == before | int(U)
    assert env.entry(0x20_0000, 3) & ~ADDRESS_MASK == int(P | W | U)


def test_mp05_allocator_with_one_frame_no_rollback_then_clean_up(env: Env) -> None:
    """MP-05 (verified): with an allocator holding one frame, map_to fails with
    FrameAllocationFailed; P4[0] stays linked to the new, empty P3; a later clean_up frees it."""
    one: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x2000, 0x3000)
    with pytest.raises(FrameAllocationFailed):
        env.mapper.map_to(page4k(0x1000), frame4k(0x9000), P | W, one)
    assert env.memory.read_u64(P4_PHYS) == 0x2000 | int(P | W)
    assert PageTable(env.memory, 0x2000).is_empty()
    env.mapper.clean_up(one)
    assert [int(f.start_address()) for f in one.deallocated] == [0x2000]
    assert PageTable(env.memory, P4_PHYS).is_empty()


def test_mp05_allocation_failure_at_p1_keeps_upper_tables(env: Env) -> None:
    """MP-05 / FA-04: failure at the P1 level keeps the P3 and P2 created before it."""
    two: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x2000, env.table(2))
    with pytest.raises(FrameAllocationFailed):
        env.mapper.map_to(page4k(0x1000), frame4k(0x9000), P | W, two)
    assert env.entry(0x1000, 4) == env.table(0) | int(P | W)
    assert env.entry(0x1000, 3) == env.table(1) | int(P | W)
    assert env.entry(0x1000, 2) == 0


# -- MP-06..MP-11: map_to_with_table_flags per size ------------------------------------------------


def test_mp06_4k_allocation_order_and_flush_token(env: Env) -> None:
    """MP-06 / FA-04 (verified: allocation log [P3, P2, P1]) / FA-05: a 4KiB map creates P3,
    P2, P1 top-down and returns MapperFlush(page)."""
    page = page4k(0o123_456_701_234_0000)
    tok = env.mapper.map_to(page, frame4k(0x7777_7000), P | W, env.alloc)
    assert isinstance(tok, MapperFlush) and tok.page() == page
    tok.ignore()
    assert env.allocated() == env.tables(3)
    va = 0o123_456_701_234_0000
    assert env.entry_pa(va, 4) == env.table(-1) + 8 * 0o123  # (table(-1): P4_PHYS at 4 levels)
    assert env.entry(va, 4) == env.table(0) | int(P | W)
    assert env.entry_pa(va, 3) == env.table(0) + 8 * 0o456
    assert env.entry(va, 3) == env.table(1) | int(P | W)
    assert env.entry(va, 2) == env.table(2) | int(P | W)
    assert env.entry_pa(va, 1) == env.table(2) + 8 * 0o234
    assert env.entry(va, 1) == 0x7777_7000 | int(P | W)
    env.map(page4k(0o123_456_701_235_0000), frame4k(0x1000))
    assert env.allocated() == env.tables(3)  # existing parents are reused


def test_mp06_page_already_mapped_carries_requested_frame(env: Env) -> None:
    """MP-06 (verified) / I-03: PageAlreadyMapped carries the caller's frame, not the one in the
    entry, and the existing entry is untouched (also for the same frame)."""
    env.map(page4k(0x5000), frame4k(0xA000))
    with pytest.raises(PageAlreadyMapped) as ei:
        env.mapper.map_to(page4k(0x5000), frame4k(0xB000), P, env.alloc)
    assert ei.value.frame == frame4k(0xB000)
    with pytest.raises(PageAlreadyMapped) as ej:
        env.mapper.map_to(page4k(0x5000), frame4k(0xA000), P | W, env.alloc)
    assert ej.value.frame == frame4k(0xA000)
    assert env.entry(0x5000, 1) == 0xA000 | int(P | W)


def test_mp06_leaf_flags_are_exact_present_not_added(env: Env) -> None:
    """MP-06 (verified): the 4KiB leaf gets exactly `flags`; PRESENT is not added."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.mapper.map_to_with_table_flags(
        page4k(0x2000), frame4k(0xB000), W | NX, P, env.alloc
    ).ignore()
    assert env.entry(0x2000, 1) == 0xB000 | int(W | NX)
    env.mapper.map_to(page4k(0x3000), frame4k(0xC000), F(0), env.alloc).ignore()
    # empty leaf flags: raw = the address alone (the entry is "used")
    assert env.entry(0x3000, 1) == 0xC000


def test_mp06_huge_page_flag_in_4k_leaf_panics(env: Env) -> None:
    """MP-06 (verified) / I-27: HUGE_PAGE in a 4KiB map's flags trips the set_frame assertion;
    the parents are created first (map_to passes only P|W|U to them)."""
    with pytest.raises(
        Panic, match=r"^assertion failed: !flags.contains\(PageTableFlags::HUGE_PAGE\)"
    ):
        env.mapper.map_to(page4k(0x1000), frame4k(0xA000), P | W | H, env.alloc)
    assert env.allocated() == env.tables(3)
    assert env.entry(0x1000, 1) == 0


def test_mp07_2m_map_adds_huge_and_uses_two_frames(env: Env) -> None:
    """MP-07 (verified) / FA-05: a 2MiB map creates P3 and P2 only and stores
    frame | flags | HUGE_PAGE."""
    env.map(page2m(0x20_0000), frame2m(0x4000_0000), P | W)
    assert env.allocated() == env.tables(2)
    assert env.entry(0x20_0000, 2) == 0x4000_0000 | int(P | W | H)
    with pytest.raises(PageAlreadyMapped) as ei:
        env.mapper.map_to(page2m(0x20_0000), frame2m(0x6000_0000), P, env.alloc)
    assert ei.value.frame == frame2m(0x6000_0000)


def test_mp07_2m_map_over_a_p1_table_is_already_mapped(env: Env) -> None:
    """MP-07 (verified): a P2 entry that points to a P1 table also counts as already mapped."""
    env.map(page4k(0x40_1000), frame4k(0xA000))
    with pytest.raises(PageAlreadyMapped):
        env.mapper.map_to(page2m(0x40_0000), frame2m(0x20_0000), P | W, env.alloc)
    assert env.entry(0x40_0000, 2) == env.table(2) | int(P | W)


def test_mp08_1g_map_consumes_one_frame(env: Env) -> None:
    """MP-08 (verified: one frame when the P4 entry is new) / FA-05."""
    env.map(page1g(0x80_0000_0000), frame1g(0x8000_0000), P | W)
    assert env.allocated() == env.tables(1)
    assert env.entry(0x80_0000_0000, 3) == 0x8000_0000 | int(P | W | H)
    with pytest.raises(PageAlreadyMapped) as ei:
        env.mapper.map_to(page1g(0x80_0000_0000), frame1g(0x4000_0000), P, env.alloc)
    assert ei.value.frame == frame1g(0x4000_0000)
    env.map(page1g(0x80_4000_0000), frame1g(0xC000_0000), P)
    assert env.allocated() == env.tables(1)


def test_mp09_os_bit_only_leaf_blocks_mapping(env: Env) -> None:
    """MP-09 (verified) / I-04: 'already mapped' means raw != 0, so a leaf holding only BIT_11
    (not present) blocks map_to."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(0x2000, 1, F.BIT_11)
    with pytest.raises(PageAlreadyMapped):
        env.mapper.map_to(page4k(0x2000), frame4k(0xB000), P | W, env.alloc)
    assert env.entry(0x2000, 1) == int(F.BIT_11)


@pytest.mark.parametrize(
    ("outer", "inner"),
    [("1GiB", "2MiB"), ("1GiB", "4KiB"), ("2MiB", "4KiB")],
)
def test_mp10_map_inside_a_huge_page_is_parent_entry_huge_page(
    env: Env, outer: str, inner: str
) -> None:
    """MP-10 (verified): 2MiB inside 1GiB, 4KiB inside 2MiB or 1GiB => ParentEntryHugePage."""
    if outer == "1GiB":
        env.map(page1g(0x4000_0000), frame1g(0x4000_0000))
    else:
        env.map(page2m(0x4000_0000), frame2m(0x4000_0000))
    n = len(env.alloc.allocated)
    page, frame = (
        (page2m(0x4020_0000), frame2m(0x20_0000))
        if inner == "2MiB"
        else (page4k(0x4000_1000), frame4k(0x1000))
    )
    with pytest.raises(ParentEntryHugePage):
        env.mapper.map_to(page, frame, P | W, env.alloc)
    assert len(env.alloc.allocated) == n


def test_mp11_no_frame_or_flag_sanity_checks(env: Env) -> None:
    """MP-11: the mapper does not check that the frame is unused (two pages on one frame, a
    page on a page-table frame) nor flag sanity (GLOBAL/NO_EXECUTE on parents)."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.map(page4k(0x2000), frame4k(0xA000))
    env.map(page4k(0x3000), frame4k(P4_PHYS))  # the level-4 table's own frame
    env.mapper.map_to_with_table_flags(
        page4k(0x8000_0000), frame4k(0xA000), P | F.GLOBAL, P | F.GLOBAL | NX, env.alloc
    ).ignore()
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == env.mapper.translate_addr(
        VirtAddr(0x2000)
    )
    assert env.mapper.translate_addr(VirtAddr(0x3008)) == PhysAddr(P4_PHYS + 8)
    assert env.entry(0x8000_0000, 3) & ~ADDRESS_MASK == int(P | F.GLOBAL | NX)


# -- MP-12..MP-15: unmap ------------------------------------------------------------------------


def test_mp12_unmap_4k_returns_frame_and_token_keeps_tables(env: Env) -> None:
    """MP-12 (verified): unmap clears the leaf, returns (frame, MapperFlush(page)); tables stay."""
    page = page4k(0x1000)
    env.map(page, frame4k(0xA000), P | W | NX)
    frame, tok = env.mapper.unmap(page)
    assert frame == frame4k(0xA000)
    assert isinstance(tok, MapperFlush) and tok.page() == page
    tok.ignore()
    assert env.entry(0x1000, 1) == 0
    assert env.entry(0x1000, 2) == env.table(2) | int(P | W)
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(page)


def test_mp12_unmap_4k_parent_errors(env: Env) -> None:
    """MP-12 (verified): non-present parent => PageNotMapped (even non-zero), huge parent =>
    ParentEntryHugePage, at every level."""
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(page4k(0x1000))
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(0x1000, 3, env.entry(0x1000, 3) & ~int(P))
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(page4k(0x1000))
    env.map(page1g(0x4000_0000), frame1g(0x4000_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(page4k(0x4000_1000))
    env.map(page2m(0x80_0000_0000), frame2m(0x20_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(page4k(0x80_0000_1000))


def test_mp12_unmap_4k_leaf_with_huge_bit_is_parent_entry_huge_page(env: Env) -> None:
    """MP-12 (verified) / I-27: a P1 entry with bit 7 set is treated as HUGE by frame(), so
    unmap says ParentEntryHugePage and leaves it."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(0x1000, 1, 0xA000 | int(P | W | H))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(page4k(0x1000))
    assert env.entry(0x1000, 1) == 0xA000 | int(P | W | H)


@pytest.mark.parametrize("size", ["2MiB", "1GiB"])
def test_mp13_mp14_unmap_huge(env: Env, size: str) -> None:
    """MP-13 / MP-14 (verified) / I-07 (#610): for a 2MiB (P2) / 1GiB (P3) leaf: not present =>
    PageNotMapped; present without HUGE_PAGE (a table pointer) => ParentEntryHugePage; misaligned
    stored address => InvalidFrameAddress(addr) with the entry untouched; else zero + frame."""
    pg: Callable[[int], Page[Any]]
    fr: Callable[[int], PhysFrame[Any]]
    if size == "2MiB":
        va, level, pg, fr, span = 0x20_0000, 2, page2m, frame2m, 0x20_0000
    else:
        va, level, pg, fr, span = 0x4000_0000, 3, page1g, frame1g, 0x4000_0000
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(pg(va))
    env.map(pg(va), fr(span * 3), P | W)
    frame, tok = env.mapper.unmap(pg(va))
    tok.ignore()
    assert frame == fr(span * 3) and env.entry(va, level) == 0
    # not present (but non-zero, even with HUGE_PAGE)
    env.set_entry(va, level, span * 3 | int(W | H))
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(pg(va))
    # present, not huge: the entry points to a table => the misnamed ParentEntryHugePage
    env.set_entry(va, level, 0x9000 | int(P | W))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(pg(va))
    # misaligned huge address
    bad = span * 3 + 0x1000
    env.set_entry(va, level, bad | int(P | W | H))
    with pytest.raises(InvalidFrameAddress) as ei:
        env.mapper.unmap(pg(va))
    assert ei.value.addr == PhysAddr(bad)
    assert env.entry(va, level) == bad | int(P | W | H)


def test_mp13_unmap_2m_parent_errors(env: Env) -> None:
    """MP-13: the walk P4 -> P3 for a 2MiB unmap: huge P3 => ParentEntryHugePage."""
    env.map(page1g(0x4000_0000), frame1g(0x4000_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(page2m(0x4020_0000))


def test_mp15_os_bit_only_leaf_unmap_says_not_mapped(env: Env) -> None:
    """MP-15 (verified) / I-04 (#561): a non-present leaf holding only BIT_11 is PageNotMapped
    for unmap although map_to says PageAlreadyMapped for it."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(0x2000, 1, F.BIT_11)
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(page4k(0x2000))
    with pytest.raises(PageAlreadyMapped):
        env.mapper.map_to(page4k(0x2000), frame4k(0xB000), P, env.alloc)
    assert env.entry(0x2000, 1) == int(F.BIT_11)


# -- MP-16..MP-18: update_flags -------------------------------------------------------------------


def test_mp16_update_flags_4k_replaces_flags_keeps_address(env: Env) -> None:
    """MP-16 (verified): full replacement of the leaf flags, address kept; parents untouched;
    HUGE_PAGE accepted (no assertion); returns MapperFlush(page)."""
    page = page4k(0x1000)
    with pytest.raises(PageNotMapped):
        env.mapper.update_flags(page, P)
    env.map(page, frame4k(0xA000), P | W | U)
    parents = [env.entry(0x1000, lvl) for lvl in (4, 3, 2)]
    tok = env.mapper.update_flags(page, P | NX)
    assert isinstance(tok, MapperFlush) and tok.page() == page
    tok.ignore()
    assert env.entry(0x1000, 1) == 0xA000 | int(P | NX)
    assert [env.entry(0x1000, lvl) for lvl in (4, 3, 2)] == parents
    env.mapper.update_flags(page, P | H).ignore()
    assert env.entry(0x1000, 1) == 0xA000 | int(P | H)
    env.mapper.update_flags(page, F(0)).ignore()
    assert env.entry(0x1000, 1) == 0xA000


def test_mp16_update_flags_on_non_present_non_zero_leaf(env: Env) -> None:
    """MP-16 (verified) / I-05 (#481): update_flags works on a non-present non-zero leaf, and a
    leaf of raw 0 is PageNotMapped."""
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(0x2000, 1, 0xB000 | int(F.BIT_9))
    env.mapper.update_flags(page4k(0x2000), P | W).ignore()
    assert env.entry(0x2000, 1) == 0xB000 | int(P | W)
    with pytest.raises(PageNotMapped):
        env.mapper.update_flags(page4k(0x3000), P)


def test_mp17_update_flags_2m_adds_huge_and_converts_a_table_pointer(env: Env) -> None:
    """MP-17 (verified): 2MiB update_flags sets flags | HUGE_PAGE without checking the entry was
    huge: applied to a P2 entry pointing to a P1 table it makes it a 2MiB mapping of that frame."""
    with pytest.raises(PageNotMapped):
        env.mapper.update_flags(page2m(0x20_0000), P)
    env.map(page2m(0x20_0000), frame2m(0x4000_0000))
    env.mapper.update_flags(page2m(0x20_0000), P | NX).ignore()
    assert env.entry(0x20_0000, 2) == 0x4000_0000 | int(P | NX | H)
    env.map(page4k(0x40_1000), frame4k(0xA000))
    p1 = env.entry(0x40_0000, 2) & ADDRESS_MASK
    env.mapper.update_flags(page2m(0x40_0000), P | W).ignore()
    assert env.entry(0x40_0000, 2) == p1 | int(P | W | H)
    r = env.mapper.translate(VirtAddr(0x40_1000))
    assert isinstance(r, Mapped) and r.frame.size_type is Size2MiB


def test_mp18_update_flags_1g_empty_flags_leave_huge(env: Env) -> None:
    """MP-18 (verified): 1GiB update_flags: P3 raw 0 => PageNotMapped; empty flags leave only
    HUGE_PAGE, so the entry stays used."""
    with pytest.raises(PageNotMapped):
        env.mapper.update_flags(page1g(0x4000_0000), P)
    env.map(page1g(0x4000_0000), frame1g(0x8000_0000))
    env.mapper.update_flags(page1g(0x4000_0000), F(0)).ignore()
    assert env.entry(0x4000_0000, 3) == 0x8000_0000 | int(H)
    with pytest.raises(PageAlreadyMapped):
        env.mapper.map_to(page1g(0x4000_0000), frame1g(0x8000_0000), P, env.alloc)


def test_mp16_mp17_update_flags_parent_walk_errors(env: Env) -> None:
    """MP-16 / MP-17: update_flags walks like unmap: a huge parent is ParentEntryHugePage,
    a non-present one PageNotMapped."""
    env.map(page1g(0x4000_0000), frame1g(0x8000_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.update_flags(page2m(0x4020_0000), P)
    with pytest.raises(ParentEntryHugePage):
        env.mapper.update_flags(page4k(0x4000_1000), P)
    env.set_entry(0x4000_0000, 4, env.entry(0x4000_0000, 4) & ~int(P))
    with pytest.raises(PageNotMapped):
        env.mapper.update_flags(page2m(0x4020_0000), P)


# -- MP-19..MP-21: set_flags_pN_entry -----------------------------------------------------------


@pytest.mark.parametrize("size", ["4KiB", "2MiB", "1GiB"])
def test_mp19_set_flags_p4_entry_replaces_exactly(env: Env, size: str) -> None:
    """MP-19 (verified: PRESENT|BIT_62 replaces PRESENT|WRITABLE, address kept), all sizes;
    returns MapperFlushAll; P4 raw 0 => PageNotMapped."""
    page = {"4KiB": page4k, "2MiB": page2m, "1GiB": page1g}[size](0x4000_0000)
    with pytest.raises(PageNotMapped):
        env.mapper.set_flags_p4_entry(page, P)
    env.map(page4k(0x4000_0000), frame4k(0xA000))
    tok = env.mapper.set_flags_p4_entry(page, P | F.BIT_62)
    assert isinstance(tok, MapperFlushAll)
    tok.ignore()
    assert env.entry(0x4000_0000, 4) == env.table(0) | int(P | F.BIT_62)
    env.mapper.set_flags_p4_entry(page, F(0)).ignore()
    assert env.entry(0x4000_0000, 4) == env.table(0)


def test_mp20_set_flags_p3_entry(env: Env) -> None:
    """MP-20 (verified): 1GiB => always ParentEntryHugePage (even with no tables); 2MiB/4KiB:
    P4 walk errors, P3 raw 0 => PageNotMapped, else exact replacement."""
    with pytest.raises(ParentEntryHugePage):
        env.mapper.set_flags_p3_entry(page1g(0x4000_0000), P)
    with pytest.raises(PageNotMapped):
        env.mapper.set_flags_p3_entry(page2m(0x4000_0000), P)
    env.map(page4k(0x1000), frame4k(0xA000))
    with pytest.raises(PageNotMapped):
        env.mapper.set_flags_p3_entry(page4k(0x4000_0000), P)
    env.mapper.set_flags_p3_entry(page2m(0), P | U).ignore()
    assert env.entry(0, 3) == env.table(1) | int(P | U)
    env.mapper.set_flags_p3_entry(page4k(0x1000), P | W | NX).ignore()
    assert env.entry(0, 3) == env.table(1) | int(P | W | NX)
    # a non-present P4 entry stops the walk
    env.set_entry(0, 4, env.table(0) | int(W))
    with pytest.raises(PageNotMapped):
        env.mapper.set_flags_p3_entry(page4k(0x1000), P)


def test_mp21_set_flags_p2_entry(env: Env) -> None:
    """MP-21 (verified): 1GiB and 2MiB => ParentEntryHugePage; 4KiB: P2 raw 0 =>
    PageNotMapped; a huge P2 entry is replaced too (dropping HUGE_PAGE makes it a table
    pointer)."""
    with pytest.raises(ParentEntryHugePage):
        env.mapper.set_flags_p2_entry(page1g(0x4000_0000), P)
    with pytest.raises(ParentEntryHugePage):
        env.mapper.set_flags_p2_entry(page2m(0x20_0000), P)
    env.map(page2m(0x20_0000), frame2m(0x20_0000))
    with pytest.raises(PageNotMapped):
        env.mapper.set_flags_p2_entry(page4k(0x40_0000), P)
    env.mapper.set_flags_p2_entry(page4k(0x20_0000), P | W).ignore()
    assert env.entry(0x20_0000, 2) == 0x20_0000 | int(P | W)
    # now a table pointer: the 4KiB walk goes through it (frame 0x20_0000 is zero memory)
    assert isinstance(env.mapper.translate(VirtAddr(0x20_0000)), NotMapped)
    with pytest.raises(PageNotMapped):
        env.mapper.translate_page(page4k(0x20_0000))


def test_mp21_set_flags_p2_parent_walk_errors(env: Env) -> None:
    """MP-21: for a 4KiB page the walk P4 -> P3 applies next_table_mut errors."""
    env.map(page1g(0x4000_0000), frame1g(0x4000_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.set_flags_p2_entry(page4k(0x4000_0000), P)


# -- MP-22..MP-24: translate_page ---------------------------------------------------------------


def test_mp22_translate_page_4k(env: Env) -> None:
    """MP-22 (verified): parents via next_table (PageNotMapped / ParentEntryHugePage); leaf raw 0
    => PageNotMapped; otherwise Ok(frame) even if the leaf is not PRESENT or carries HUGE_PAGE."""
    with pytest.raises(PageNotMapped):
        env.mapper.translate_page(page4k(0x1000))
    env.map(page4k(0x1000), frame4k(0xA000))
    assert env.mapper.translate_page(page4k(0x1000)) == frame4k(0xA000)
    with pytest.raises(PageNotMapped):
        env.mapper.translate_page(page4k(0x2000))
    env.set_entry(0x2000, 1, 0xB000 | int(F.BIT_10))
    assert env.mapper.translate_page(page4k(0x2000)) == frame4k(0xB000)
    env.set_entry(0x3000, 1, 0xC000 | int(P | H))
    assert env.mapper.translate_page(page4k(0x3000)) == frame4k(0xC000)
    env.map(page2m(0x20_0000), frame2m(0x20_0000))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.translate_page(page4k(0x20_1000))


def test_mp23_translate_page_2m(env: Env) -> None:
    """MP-23 (verified misaligned case): P2 raw 0 => PageNotMapped; misaligned address =>
    InvalidFrameAddress(addr); HUGE/PRESENT not checked: a P2 entry pointing at a 2MiB-aligned
    P1 table yields that table's frame as a 2MiB frame."""
    with pytest.raises(PageNotMapped):
        env.mapper.translate_page(page2m(0x20_0000))
    env.map(page2m(0x20_0000), frame2m(0x4000_0000))
    assert env.mapper.translate_page(page2m(0x20_0000)) == frame2m(0x4000_0000)
    env.set_entry(0x20_0000, 2, 0x4000_1000 | int(P | H))
    with pytest.raises(InvalidFrameAddress) as ei:
        env.mapper.translate_page(page2m(0x20_0000))
    assert ei.value.addr == PhysAddr(0x4000_1000)
    env.set_entry(0x20_0000, 2, 0x4000_0000 | int(H))  # not present
    assert env.mapper.translate_page(page2m(0x20_0000)) == frame2m(0x4000_0000)
    # a P1 table placed at the 2MiB-aligned frame 0x20_0000
    env.set_entry(0x40_0000, 2, 0x20_0000 | int(P | W))
    env.memory.write_u64(0x20_0000 + 8 * 5, 0xA000 | int(P))
    assert env.mapper.translate_page(page2m(0x40_0000)) == frame2m(0x20_0000)
    assert env.mapper.translate_page(page4k(0x40_5000)) == frame4k(0xA000)


def test_mp24_translate_page_1g(env: Env) -> None:
    """MP-24 (verified): P3 raw 0 => PageNotMapped; misaligned => InvalidFrameAddress; a
    non-present HUGE entry still returns Ok; P4 walk errors apply."""
    with pytest.raises(PageNotMapped):
        env.mapper.translate_page(page1g(0x4000_0000))
    env.map(page1g(0x4000_0000), frame1g(0x8000_0000))
    assert env.mapper.translate_page(page1g(0x4000_0000)) == frame1g(0x8000_0000)
    env.set_entry(0x4000_0000, 3, 0x8000_0000 | int(H | W))
    assert env.mapper.translate_page(page1g(0x4000_0000)) == frame1g(0x8000_0000)
    env.set_entry(0x4000_0000, 3, 0x8020_0000 | int(P | H))
    with pytest.raises(InvalidFrameAddress) as ei:
        env.mapper.translate_page(page1g(0x4000_0000))
    assert ei.value.addr == PhysAddr(0x8020_0000)
    env.set_entry(0x4000_0000, 4, 0x2000 | int(P | H))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.translate_page(page1g(0x4000_0000))


# -- MP-25..MP-30: translate ---------------------------------------------------------------------


def test_mp25_translate_p4(env: Env) -> None:
    """MP-25 (verified): P4 entry not present => NotMapped (also with HUGE_PAGE); PRESENT+HUGE
    => panic 'level 4 entry has huge page bit set', in translate and translate_addr. At 5
    levels the same holds of the top entry, the level-5 one (L5-07)."""
    top = env.levels
    assert isinstance(env.mapper.translate(VirtAddr(0x1000)), NotMapped)
    env.memory.write_u64(P4_PHYS, 0x2000 | int(W | H))
    assert isinstance(env.mapper.translate(VirtAddr(0x1000)), NotMapped)
    assert env.mapper.translate_addr(VirtAddr(0x1000)) is None
    env.memory.write_u64(P4_PHYS, 0x2000 | int(P | W | H))
    with pytest.raises(Panic, match=rf"^level {top} entry has huge page bit set"):
        env.mapper.translate(VirtAddr(0x1000))
    with pytest.raises(Panic, match=rf"^level {top} entry has huge page bit set"):
        env.mapper.translate_addr(VirtAddr(0x1000))


def test_mp26_translate_1g(env: Env) -> None:
    """MP-26 (verified offset 0x1234_5678, flags include HUGE_PAGE): a present huge P3 entry is
    Mapped Size1GiB with the frame aligned down (a misaligned address never yields
    InvalidFrameAddress); a non-present one is NotMapped even with HUGE_PAGE."""
    env.map(page1g(0x4000_0000), frame1g(0x8000_0000), P | W | NX)
    r = env.mapper.translate(VirtAddr(0x5234_5678))
    assert r == Mapped(MappedFrame(frame1g(0x8000_0000)), 0x1234_5678, P | W | NX | H)
    env.set_entry(0x4000_0000, 3, 0x8123_4000 | int(P | H))
    r = env.mapper.translate(VirtAddr(0x5234_5678))
    assert r == Mapped(MappedFrame(frame1g(0x8000_0000)), 0x1234_5678, P | H)
    env.set_entry(0x4000_0000, 3, 0x8000_0000 | int(W | H))
    assert isinstance(env.mapper.translate(VirtAddr(0x5234_5678)), NotMapped)


def test_mp27_translate_2m_appendix_b(env: Env) -> None:
    """MP-27 / Appendix B (verified): 2MiB page 0x20_0000 -> frame 0x4000_0000;
    translate(0x21_2345) = Mapped 2MiB, offset 0x1_2345, flags PRESENT|WRITABLE|HUGE_PAGE;
    1GiB page 0x80_0000_0000 -> frame 0x8000_0000, translate_addr(0x80_1234_5678) = 0x9234_5678."""
    env.map(page2m(0x20_0000), frame2m(0x4000_0000), P | W)
    assert env.mapper.translate(VirtAddr(0x21_2345)) == Mapped(
        MappedFrame(frame2m(0x4000_0000)), 0x1_2345, P | W | H
    )
    env.map(page1g(0x80_0000_0000), frame1g(0x8000_0000), P | W)
    assert env.mapper.translate_addr(VirtAddr(0x80_1234_5678)) == PhysAddr(0x9234_5678)
    env.set_entry(0x20_0000, 2, 0x4000_0000 | int(W | H))
    assert isinstance(env.mapper.translate(VirtAddr(0x21_2345)), NotMapped)


def test_mp28_translate_4k_leaf(env: Env) -> None:
    """MP-28 (verified): P1 raw 0 => NotMapped; PRESENT is not checked (a non-present non-zero
    leaf is Mapped with flags lacking PRESENT); HUGE_PAGE in a P1 entry is reported in flags."""
    env.map(page4k(0x1000), frame4k(0xA000), P | W)
    assert isinstance(env.mapper.translate(VirtAddr(0x2000)), NotMapped)
    env.set_entry(0x2000, 1, 0xB000 | int(F.BIT_11))
    assert env.mapper.translate(VirtAddr(0x2ABC)) == Mapped(
        MappedFrame(frame4k(0xB000)), 0xABC, F.BIT_11
    )
    assert env.mapper.translate_addr(VirtAddr(0x2ABC)) == PhysAddr(0xBABC)
    env.set_entry(0x3000, 1, 0xC000 | int(P | H))
    assert env.mapper.translate(VirtAddr(0x3001)) == Mapped(MappedFrame(frame4k(0xC000)), 1, P | H)
    assert env.mapper.translate_addr(VirtAddr(0x3001)) == PhysAddr(0xC001)


@pytest.mark.parametrize("size", ["2MiB", "1GiB"])
def test_mp29_translate_addr_misaligned_huge_uses_aligned_base(env: Env, size: str) -> None:
    """MP-29: translate_addr on a huge mapping with a misaligned stored address uses the
    aligned-down base plus the offset."""
    if size == "2MiB":
        va, level, stored, base, mask = 0x20_0000, 2, 0x4012_3000, 0x4000_0000, 0x1F_FFFF
    else:
        va, level, stored, base, mask = 0x4000_0000, 3, 0x8765_4000, 0x8000_0000, 0x3FFF_FFFF
    env.map(page4k(0x1000), frame4k(0xA000))
    env.set_entry(va, level, stored | int(P | W | H))
    addr = va + 0x1_2345
    assert env.mapper.translate_addr(VirtAddr(addr)) == PhysAddr(base + (addr & mask))


def test_mp30_translate_never_panics_except_huge_p4() -> None:
    """MP-30: over random table contents translate only ever returns a result or panics with
    MP-25's message; MappedPageTable and OffsetPageTable (with its fast translate_addr) agree,
    and translate_addr always equals what translate implies (M-04)."""
    rng = random.Random(0x5EED)
    memory = PhysMemory(MEM_SIZE)
    tables = [P4_PHYS, *range(0x2000, 0x2000 + 0x1000 * 24, 0x1000)]
    bits = [int(b) for b in F]
    for t in tables:
        for i in range(512):
            if rng.random() < 0.3:
                continue
            raw = rng.choice(tables) if rng.random() < 0.7 else rng.randrange(0, 1 << 40) << 12
            raw &= ADDRESS_MASK
            for b in bits:
                if rng.random() < 0.3:
                    raw |= b
            if raw & ADDRESS_MASK >= MEM_SIZE and raw & int(P):
                raw |= int(H)  # only leaves may point outside the memory
            memory.write_u64(t + 8 * i, raw)
    mapped = MappedPageTable(PageTable(memory, P4_PHYS), RecordingMapping(memory))
    offset = OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(OFFSET))
    outcomes: dict[str, int] = {}
    for _ in range(3000):
        va = VirtAddr.new_truncate(rng.randrange(0, 1 << 48))
        results: list[TranslateResult | str] = []
        for m in (mapped, offset):
            try:
                r = m.translate(va)
            except Panic as e:
                assert str(e).startswith("level 4 entry has huge page bit set")
                p4 = memory.read_u64(P4_PHYS + 8 * idx(va.as_u64(), 4))
                assert p4 & int(P | H) == int(P | H)
                results.append("panic")
                with pytest.raises(Panic):
                    m.translate_addr(va)
                continue
            assert isinstance(r, Mapped | NotMapped)
            expect = None if isinstance(r, NotMapped) else r.frame.start_address() + r.offset
            assert m.translate_addr(va) == expect
            results.append(r)
        assert results[0] == results[1]
        key = type(results[0]).__name__ if results[0] != "panic" else "panic"
        outcomes[key] = outcomes.get(key, 0) + 1
    assert set(outcomes) == {"Mapped", "NotMapped", "panic"}, outcomes


def _edit(e: Env, va: int, level: int, raw: int) -> None:
    """Overwrite the entry of ``level`` on the walk of ``va`` when the walk stays in memory."""
    with contextlib.suppress(PhysMemoryError):
        e.set_entry(va, level, raw)


def _outcome(fn: Any) -> Any:
    """What a call did: its value (tokens consumed and reduced to their page) or its exception."""
    try:
        v = fn()
    except (Panic, MapToError, UnmapError, FlagUpdateError, TranslateError, TypeError) as e:
        return ("raised", type(e).__name__, str(e))
    return returned(v)


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("seed", range(8))
def test_m01_mp_differential_mapped_vs_offset(seed: int, levels: int) -> None:
    """M-01 / MP-01..MP-30: a random sequence of every Mapper operation (and raw entry edits)
    gives the same results, errors, panics and memory on MappedPageTable (shared engine) and
    OffsetPageTable (with its fast paths for map_to and translate_addr), at 4 and 5 levels
    (L5-04: at 5 with 57-bit pages, some beyond 48 bits)."""
    rng = random.Random(seed)
    envs = [make_env("mapped", levels=levels), make_env("offset", levels=levels)]
    vas = [
        0x1000 * rng.randrange(0, 8)
        + (1 << 21) * rng.randrange(0, 3)
        + (1 << 30) * rng.randrange(0, 3)
        for _ in range(24)
    ] + [0xFFFF_8000_0000_0000, 0xFFFF_FFFF_FFE0_0000]
    if levels == 5:  # level-5 slots 1 and 256 (only 5-level paging reaches them)
        vas += [(1 << 48) + 0x1000 * rng.randrange(0, 4) for _ in range(6)]
        vas += [0xFF00_0000_0000_0000, 0xFF00_0000_4020_0000]
    pages = PAGE_TYPES[levels]
    addr_type = VirtAddr57 if levels == 5 else VirtAddr
    flag_bits = [P, W, U, NX, F.GLOBAL, F.BIT_9, F.BIT_11, H]

    def flags() -> F:
        f = F(0)
        for b in flag_bits:
            if rng.random() < (0.8 if b in (P, W) else 0.15):
                f |= b
        return f

    frame_types: dict[str, type[PhysFrame[Any]]] = {
        "4KiB": PhysFrame,
        "2MiB": PhysFrame[Size2MiB],
        "1GiB": PhysFrame[Size1GiB],
    }
    seen: set[str] = set()
    for _ in range(300):
        op = rng.randrange(11)
        va = rng.choice(vas)
        size = rng.choice(["4KiB", "2MiB", "1GiB"])
        pg: type[Page[Any]] = pages[{"4KiB": Size4KiB, "2MiB": Size2MiB, "1GiB": Size1GiB}[size]]
        fr = frame_types[size]
        page = pg.containing_address(addr_type(va))
        frame = fr.containing_address(PhysAddr(rng.randrange(0, 1 << 40)))
        f1, f2 = flags(), flags()
        level = rng.choice(range(1, levels + 1))
        raw_edit = (
            rng.choice([0, int(F.BIT_11), int(P | W)])
            | rng.choice([0x2000, 0x3000, 0x20_0000, 0])
            | rng.choice([0, int(H)])
        )
        results = []
        for e in envs:
            if op < 10:
                call = functools.partial(mapper_op, e, op, page, frame, f1, f2, va)
            else:
                call = functools.partial(_edit, e, va, level, raw_edit)
            try:
                results.append(_outcome(call))
            except Exception as exc:  # memory outside: both must agree on it too
                results.append(("other", type(exc).__name__))
        assert results[0] == results[1], (op, hex(va), size)
        seen.add(results[0][0] if results[0][0] != "raised" else results[0][1])
        assert envs[0].memory._buf == envs[1].memory._buf  # bytearrays: a fast compare
    assert "flush" in seen and "PageNotMapped" in seen and len(seen) >= 5, seen
    ends: list[tuple[Any, ...]] = []
    for e in envs:
        try:
            e.mapper.clean_up(e.alloc)
            ends.append(("ok", e.alloc.deallocated))
        except Exception as exc:  # e.g. a table pointer to a frame outside the memory
            ends.append(("raised", type(exc).__name__, e.alloc.deallocated))
    assert ends[0] == ends[1]


# -- 6.5: the crate's doc-tests (compile-only upstream), run here ---------------------------------


def test_doc_6_5_map_to_user_accessible(env: Env) -> None:
    """6.5 / M-02: the Mapper::map_to doc-test: PRESENT|WRITABLE|USER_ACCESSIBLE, then flush()."""
    tlb = env.mapper.tlb
    env.mapper.map_to(page4k(0x40_0000), frame4k(0x9000), P | W | U, env.alloc).flush()
    assert tlb.log == [("invlpg", VirtAddr(0x40_0000))]
    for level in (4, 3, 2):
        assert env.entry(0x40_0000, level) & ~ADDRESS_MASK == int(P | W | U)
    assert env.entry(0x40_0000, 1) == 0x9000 | int(P | W | U)


def test_doc_6_5_map_to_with_table_flags_user_only(env: Env) -> None:
    """6.5 / MP-05 / I-06: the map_to_with_table_flags doc-test (leaf P|W|U|NX|NO_CACHE, parents
    USER_ACCESSIBLE only) is compile-only upstream: run on a fresh hierarchy it panics 'entry
    should be mapped at this point'; under existing present parents it works and adds U."""
    leaf = P | W | U | NX | F.NO_CACHE
    with pytest.raises(Panic, match=r"^entry should be mapped at this point"):
        env.mapper.map_to_with_table_flags(page4k(0x40_0000), frame4k(0x9000), leaf, U, env.alloc)
    e = make_env(env.kind)
    e.map(page4k(0x40_1000), frame4k(0x8000), P | W)
    e.mapper.map_to_with_table_flags(page4k(0x40_0000), frame4k(0x9000), leaf, U, e.alloc).flush()
    for level in (4, 3, 2):
        assert e.entry(0x40_0000, level) & ~ADDRESS_MASK == int(P | W | U)
    assert e.entry(0x40_0000, 1) == 0x9000 | int(leaf)


def test_doc_6_5_clean_up_lower_half(env4: Env) -> None:
    """6.5 / C-10: the clean_up_addr_range doc-test: the lower half 0 ..= 0x7fff_ffff_ffff frees
    the empty lower-half tables and keeps upper-half ones. (5 levels: test_la57.py, L5-10.)"""
    env = env4
    env.map(page4k(0x1000), frame4k(0x9000))
    env.map(page4k(0xFFFF_8000_0000_0000), frame4k(0xA000))
    for va in (0x1000, 0xFFFF_8000_0000_0000):
        _, tok = env.mapper.unmap(page4k(va))
        tok.ignore()
    lower_half: PageRangeInclusive[Size4KiB] = Page.range_inclusive(
        Page.containing_address(VirtAddr(0)), Page.containing_address(VirtAddr(0x7FFF_FFFF_FFFF))
    )
    env.mapper.clean_up_addr_range(lower_half, env.alloc)
    assert [int(f.start_address()) for f in env.alloc.deallocated] == [0x4000, 0x3000, 0x2000]
    assert env.memory.read_u64(P4_PHYS) == 0
    assert env.memory.read_u64(P4_PHYS + 8 * 256) == 0x5000 | int(P | W)


# -- cases from the crate's issues (checklist section 7, I-ids; the rest: test_mapper.py) ----------


def test_i06_offset_page_table_map_to_without_present_panics() -> None:
    """I-06 (#554): OffsetPageTable.map_to with flags lacking PRESENT panics 'entry should be
    mapped at this point' (also on master, MP-04.3)."""
    e = make_env("offset")
    with pytest.raises(Panic, match=r"^entry should be mapped at this point"):
        e.mapper.map_to(page4k(0x1000), frame4k(0x9000), W | U, e.alloc)


def test_i20_offset_page_table_checked_add() -> None:
    """I-20 (#290): OffsetPageTable's phys -> virt uses the checked VirtAddr add."""
    memory = PhysMemory(MEM_SIZE)
    m = OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(0x7FFF_FFFF_F000))
    memory.write_u64(P4_PHYS, 0x2000 | int(P | W))
    with pytest.raises(Panic, match=r"^attempt to add resulted in non-canonical virtual address"):
        m.translate(VirtAddr(0))
