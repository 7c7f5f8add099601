"""Checklist section 4 (``frame_alloc.rs``): rules FA-01..FA-05.

FA-01 / FA-02 are tested on the two allocators of `kvmpage.paging.frame_alloc`; FA-03..FA-05
(what a mapper asks the allocator for, and in which order) on an `OffsetPageTable` with offset 0
over a `PhysMemory`, reading the allocator's ``.allocated`` log. Every test cites its rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from support import frame_type, page_type

from kvmpage import PhysAddr, PhysMemory, PhysMemoryError, VirtAddr
from kvmpage.paging import (
    BumpFrameAllocator,
    FrameAllocationFailed,
    FrameDeallocationError,
    OffsetPageTable,
    Page,
    PageRangeInclusive,
    PageSize,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    Size1GiB,
    Size2MiB,
    Size4KiB,
)
from kvmpage.paging.table import PageTable

pytestmark = pytest.mark.filterwarnings("error::kvmpage.paging.UnusedFlushWarning")

F = PageTableFlags
PW = F.PRESENT | F.WRITABLE
MEM = 0x10_0000
P4_ADDR = 0x1000
POOL = (0x2000, 0x40000)


def frame(addr: int, size: type[PageSize] = Size4KiB) -> PhysFrame[Any]:
    return frame_type(size).containing_address(PhysAddr(addr))


def page(addr: int, size: type[PageSize] = Size4KiB) -> Page[Any]:
    return page_type(size).containing_address(VirtAddr(addr))


def starts(frames: Iterable[PhysFrame[Any] | None]) -> list[int]:
    return [f.start_address().as_u64() for f in frames if f is not None]


def take(allocator: BumpFrameAllocator[Size4KiB]) -> PhysFrame[Size4KiB]:
    """The allocator's next frame, which must exist."""
    f = allocator.allocate_frame()
    assert f is not None
    return f


@pytest.fixture
def memory() -> Iterator[PhysMemory]:
    m = PhysMemory(MEM)
    with m:
        yield m


@pytest.fixture
def mapper(memory: PhysMemory) -> OffsetPageTable:
    return OffsetPageTable(PageTable(memory, P4_ADDR), VirtAddr(0))


@pytest.fixture
def alloc(memory: PhysMemory) -> PoolFrameAllocator[Size4KiB]:
    return PoolFrameAllocator(*POOL, memory=memory)


# -- FA-01: FrameAllocator -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BumpFrameAllocator, PoolFrameAllocator])
def test_fa01_unique_frames_in_order_then_none(cls: type[BumpFrameAllocator[Size4KiB]]) -> None:
    """FA-01: each frame is unique and unused; None means out of memory (and stays None)."""
    a = cls(0x1000, 0x5000)
    got = [a.allocate_frame() for _ in range(4)]
    assert starts(got) == [0x1000, 0x2000, 0x3000, 0x4000]
    assert all(type(f) is PhysFrame for f in got)
    assert a.allocate_frame() is None
    assert a.allocate_frame() is None
    assert a.allocated == got
    assert a.remaining() == 0


@pytest.mark.parametrize("size", [Size2MiB, Size1GiB])
def test_fa01_sized_allocators(size: type[PageSize]) -> None:
    """FA-01: FrameAllocator<S> for the huge sizes hands out frames of that size."""
    a: PoolFrameAllocator[Any] = PoolFrameAllocator(0, 2 * size.SIZE, size=size)
    f1, f2 = a.allocate_frame(), a.allocate_frame()
    assert type(f1) is frame_type(size) and type(f2) is frame_type(size)
    assert starts([f1, f2]) == [0, size.SIZE]
    assert a.allocate_frame() is None


def test_fa01_allocator_range_is_validated(memory: PhysMemory) -> None:
    """FA-01: an allocator never hands out a frame outside its range or outside memory."""
    with pytest.raises(ValueError):
        BumpFrameAllocator(0x1001, 0x5000)
    with pytest.raises(ValueError):
        BumpFrameAllocator(0x5000, 0x1000)
    with pytest.raises(ValueError):
        PoolFrameAllocator(0x1000, 0x30_0000, size=Size2MiB)
    with pytest.raises(PhysMemoryError):
        PoolFrameAllocator(0, MEM + 0x1000, memory=memory)
    a: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(MEM - 0x2000, MEM, memory=memory)
    assert starts([a.allocate_frame(), a.allocate_frame()]) == [MEM - 0x2000, MEM - 0x1000]
    assert a.allocate_frame() is None
    empty: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(0x3000, 0x3000)
    assert empty.allocate_frame() is None and empty.remaining() == 0


def test_fa01_exhaustion_is_frame_allocation_failed(
    memory: PhysMemory, mapper: OffsetPageTable
) -> None:
    """FA-01: a mapper turns None into FrameAllocationFailed (no rollback, MP-05)."""
    one: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x2000, 0x3000, memory=memory)
    with pytest.raises(FrameAllocationFailed):
        mapper.map_to(page(0x40_0000), frame(0x8_0000), PW, one)
    assert starts(one.allocated) == [0x2000]
    p4 = PageTable(memory, P4_ADDR)
    assert p4[0].raw == 0x2000 | int(PW)  # the P3 stays linked
    assert PageTable(memory, 0x2000).is_empty()


def test_fa01_any_object_with_allocate_frame_is_an_allocator(
    memory: PhysMemory, mapper: OffsetPageTable
) -> None:
    """FA-01: the trait is structural: any object with allocate_frame() works."""

    class Stack:
        def __init__(self) -> None:
            self.frames = [frame(0x9000), frame(0x8000), frame(0x7000)]

        def allocate_frame(self) -> PhysFrame[Size4KiB] | None:
            return self.frames.pop() if self.frames else None

    s = Stack()
    mapper.map_to(page(0x1000), frame(0x5_0000), PW, s).ignore()
    assert s.frames == []
    assert mapper.translate_addr(VirtAddr(0x1234)) == PhysAddr(0x5_0234)


# -- FA-02: FrameDeallocator ---------------------------------------------------------------------


def test_fa02_pool_deallocate_and_reuse_lowest_first() -> None:
    """FA-02: deallocate_frame takes a frame back; freed frames are reused lowest first."""
    a: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x1000, 0x6000)
    f = [take(a) for _ in range(5)]
    assert a.in_use() == 5 and a.remaining() == 0
    a.deallocate_frame(f[3])
    a.deallocate_frame(f[1])
    assert a.deallocated == [f[3], f[1]]
    assert a.in_use() == 3 and a.remaining() == 2
    assert a.allocate_frame() == f[1]
    assert a.allocate_frame() == f[3]
    assert a.allocate_frame() is None
    assert a.allocated == [*f, f[1], f[3]]


def test_fa02_pool_refuses_foreign_and_double_free() -> None:
    """FA-02: a frame not handed out, or freed twice, is refused; a wrong size is a TypeError."""
    a: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x1000, 0x3000)
    f = take(a)
    with pytest.raises(FrameDeallocationError):
        a.deallocate_frame(frame(0x2000))  # in range but never handed out
    with pytest.raises(FrameDeallocationError):
        a.deallocate_frame(frame(0x9000))
    a.deallocate_frame(f)
    with pytest.raises(FrameDeallocationError):
        a.deallocate_frame(f)
    with pytest.raises(TypeError):
        a.deallocate_frame(frame(0, Size2MiB))
    assert a.deallocated == [f]


def test_fa02_bump_allocator_cannot_deallocate() -> None:
    """FA-02: FrameDeallocator is a separate trait; the bump allocator does not implement it."""
    assert not hasattr(BumpFrameAllocator(0, 0x1000), "deallocate_frame")


def test_fa02_only_clean_up_deallocates(
    memory: PhysMemory, mapper: OffsetPageTable, alloc: PoolFrameAllocator[Size4KiB]
) -> None:
    """FA-02: unmap never frees tables; only CleanUp calls deallocate_frame."""
    mapper.map_to(page(0x1000), frame(0x8_0000), PW, alloc).ignore()
    tables = list(alloc.allocated)
    mapper.unmap(page(0x1000))[1].ignore()
    assert alloc.deallocated == []
    mapper.clean_up_addr_range(PageRangeInclusive(page(0), page(0x7FFF_FFFF_F000)), alloc)
    assert sorted(starts(alloc.deallocated)) == sorted(starts(tables))
    assert PageTable(memory, P4_ADDR).is_empty()


# -- FA-03: mappers only allocate 4 KiB table frames --------------------------------------------


@pytest.mark.parametrize("size", [Size2MiB, Size1GiB])
def test_fa03_huge_mappings_take_a_4kib_allocator(
    memory: PhysMemory,
    mapper: OffsetPageTable,
    alloc: PoolFrameAllocator[Size4KiB],
    size: type[PageSize],
) -> None:
    """FA-03 (issue #390): mapping 2MiB/1GiB pages uses a FrameAllocator<Size4KiB> for the
    intermediate tables only; the leaf frame is the caller's."""
    leaf = frame(8 * size.SIZE, size)
    mapper.map_to(page(4 * size.SIZE, size), leaf, PW, alloc).ignore()
    assert alloc.allocated and all(type(f) is PhysFrame for f in alloc.allocated)
    assert leaf not in alloc.allocated
    assert mapper.translate_addr(VirtAddr(4 * size.SIZE + 0x123)) == PhysAddr(8 * size.SIZE + 0x123)


def test_fa03_huge_frame_allocator_is_refused(memory: PhysMemory, mapper: OffsetPageTable) -> None:
    """FA-03: an allocator of huge frames cannot supply page tables (TypeError)."""
    huge: PoolFrameAllocator[Size2MiB] = PoolFrameAllocator(0, 4 * Size2MiB.SIZE, size=Size2MiB)
    with pytest.raises(TypeError):
        mapper.map_to(page(0x20_0000, Size2MiB), frame(0x40_0000, Size2MiB), PW, huge)


def test_fa03_leaf_frame_is_never_allocated(
    memory: PhysMemory, mapper: OffsetPageTable, alloc: PoolFrameAllocator[Size4KiB]
) -> None:
    """FA-03: a 4 KiB mapping allocates only tables; the leaf comes from the caller."""
    mapper.map_to(page(0x1000), frame(0x9_0000), PW, alloc).ignore()
    assert frame(0x9_0000) not in alloc.allocated
    assert len(alloc.allocated) == 3


# -- FA-04: allocation order ---------------------------------------------------------------------


def test_fa04_allocation_order_is_p3_p2_p1(
    memory: PhysMemory, mapper: OffsetPageTable, alloc: PoolFrameAllocator[Size4KiB]
) -> None:
    """FA-04 (verified): one 4 KiB map on an empty hierarchy allocates [P3, P2, P1] in order."""
    va = 0o001_002_003_004_0000
    mapper.map_to(page(va), frame(0x9_0000), PW, alloc).ignore()
    p3f, p2f, p1f = alloc.allocated
    assert starts(alloc.allocated) == [0x2000, 0x3000, 0x4000]
    p4 = PageTable(memory, P4_ADDR)
    assert p4[1].frame() == p3f
    assert PageTable(memory, p3f.start_address().as_u64())[2].frame() == p2f
    assert PageTable(memory, p2f.start_address().as_u64())[3].frame() == p1f
    assert PageTable(memory, p1f.start_address().as_u64())[4].frame() == frame(0x9_0000)


def test_fa04_only_unused_parent_entries_allocate(
    memory: PhysMemory, mapper: OffsetPageTable, alloc: PoolFrameAllocator[Size4KiB]
) -> None:
    """FA-04: a table is allocated only where the parent entry is unused (raw == 0)."""
    mapper.map_to(page(0x1000), frame(0x9_0000), PW, alloc).ignore()
    assert len(alloc.allocated) == 3
    # same P1 table: nothing allocated
    mapper.map_to(page(0x2000), frame(0xA_0000), PW, alloc).ignore()
    assert len(alloc.allocated) == 3
    # same P2 table, next P1 table: one allocation (the P1)
    mapper.map_to(page(0x20_0000), frame(0xB_0000), PW, alloc).ignore()
    assert len(alloc.allocated) == 4
    # same P3 table, next P2 table: two (P2 then P1)
    mapper.map_to(page(0x4000_0000), frame(0xC_0000), PW, alloc).ignore()
    assert len(alloc.allocated) == 6
    p3 = PageTable(memory, alloc.allocated[0].start_address().as_u64())
    assert p3[1].frame() == alloc.allocated[4]


def test_fa04_non_zero_non_present_parent_is_not_reallocated(
    memory: PhysMemory, mapper: OffsetPageTable, alloc: PoolFrameAllocator[Size4KiB]
) -> None:
    """FA-04: the test is raw == 0, not PRESENT: a P4 entry holding only an address and an OS
    bit is reused (the parent flags are OR'ed in), so only P2 and P1 are allocated."""
    p4 = PageTable(memory, P4_ADDR)
    p4[0] = 0x3F000 | int(F.BIT_9)  # a zeroed frame outside the allocator's range
    mapper.map_to(page(0x1000), frame(0x9_0000), PW, alloc).ignore()
    assert len(alloc.allocated) == 2
    assert p4[0].raw == 0x3F000 | int(F.BIT_9 | PW)
    assert PageTable(memory, 0x3F000)[0].frame() == alloc.allocated[0]


# -- FA-05: at most 3 / 2 / 1 frames per map ----------------------------------------------------


@pytest.mark.parametrize("size, frames", [(Size4KiB, 3), (Size2MiB, 2), (Size1GiB, 1)])
def test_fa05_frames_per_map(
    memory: PhysMemory,
    mapper: OffsetPageTable,
    alloc: PoolFrameAllocator[Size4KiB],
    size: type[PageSize],
    frames: int,
) -> None:
    """FA-05: one map consumes at most 3 (4KiB), 2 (2MiB), 1 (1GiB) frames, top-down."""
    mapper.map_to(page(0xFFFF_8000_0000_0000, size), frame(0, size), PW, alloc).ignore()
    assert len(alloc.allocated) == frames
    p4 = PageTable(memory, P4_ADDR)
    assert p4[256].frame() == alloc.allocated[0]
    mapper.map_to(
        page(0xFFFF_8000_0000_0000 + size.SIZE, size), frame(size.SIZE, size), PW, alloc
    ).ignore()
    assert len(alloc.allocated) == frames  # siblings share every table


@pytest.mark.parametrize("size, frames", [(Size4KiB, 3), (Size2MiB, 2), (Size1GiB, 1)])
def test_fa05_exactly_enough_frames(
    memory: PhysMemory, mapper: OffsetPageTable, size: type[PageSize], frames: int
) -> None:
    """FA-05: an allocator holding exactly the maximum suffices; one fewer fails."""
    enough: PoolFrameAllocator[Size4KiB]
    enough = PoolFrameAllocator(0x2000, 0x2000 + frames * 0x1000, memory=memory)
    mapper.map_to(page(0, size), frame(0, size), PW, enough).ignore()
    assert enough.remaining() == 0
    other = OffsetPageTable(PageTable(memory, 0x80000), VirtAddr(0))
    short: PoolFrameAllocator[Size4KiB]
    short = PoolFrameAllocator(0x90000, 0x90000 + (frames - 1) * 0x1000, memory=memory)
    with pytest.raises(FrameAllocationFailed):
        other.map_to(page(0, size), frame(0, size), PW, short)
    assert len(short.allocated) == frames - 1
