"""`PhysMemory`: the physical address space page tables are written into.

Bounds errors on every accessor, nothing written out of bounds, alignment of u64 and table
accesses, closed memory, and an mmap-backed memory (as registered with KVM) that works and whose
mmap can be closed after `PhysMemory.close`.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

import pytest

from kvmpage import PhysAddr, PhysMemory, PhysMemoryError, VirtAddr
from kvmpage.paging import (
    OffsetPageTable,
    Page,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    Size4KiB,
)
from kvmpage.paging.table import PageTable

SIZE = 0x4000

#: an accessor called on a memory
Call = Callable[[PhysMemory], object]

# (name, call) pairs: every accessor, called out of bounds
OUT_OF_BOUNDS: list[tuple[str, Call]] = [
    ("read past end", lambda m: m.read(SIZE - 4, 8)),
    ("read at end", lambda m: m.read(SIZE, 1)),
    ("read negative", lambda m: m.read(-1, 1)),
    ("read negative length", lambda m: m.read(0, -1)),
    ("write past end", lambda m: m.write(SIZE - 4, b"\xff" * 8)),
    ("write at end", lambda m: m.write(SIZE, b"\xff")),
    ("write negative", lambda m: m.write(-4, b"\xff" * 8)),
    ("zero past end", lambda m: m.zero(SIZE - 4, 8)),
    ("zero negative", lambda m: m.zero(-8, 16)),
    ("view past end", lambda m: m.view(SIZE - 4, 8)),
    ("view negative", lambda m: m.view(-1, 2)),
    ("read_u64 at end", lambda m: m.read_u64(SIZE)),
    ("read_u64 negative", lambda m: m.read_u64(-8)),
    ("write_u64 at end", lambda m: m.write_u64(SIZE, (1 << 64) - 1)),
    ("write_u64 far", lambda m: m.write_u64(1 << 40, 1)),
    ("write_u64 negative", lambda m: m.write_u64(-8, (1 << 64) - 1)),
    ("table at end", lambda m: PageTable(m, SIZE)),
    ("table negative", lambda m: PageTable(m, -0x1000)),
    ("check", lambda m: m.check(SIZE - 1, 2)),
]


@pytest.fixture
def memory() -> Iterator[PhysMemory]:
    m = PhysMemory(SIZE)
    yield m
    m.close()


def filled(size: int = SIZE) -> PhysMemory:
    """A memory whose every byte is 0x5a, so any stray write shows."""
    return PhysMemory(size, buffer=bytearray(b"\x5a" * size))


# -- construction -------------------------------------------------------------------------------


def test_new_memory_is_zeroed_and_sized(memory: PhysMemory) -> None:
    assert memory.size == SIZE
    assert memory.read(0, SIZE) == bytes(SIZE)
    assert not memory.closed
    assert repr(memory) == "PhysMemory(size=0x4000, backing=bytearray)"


@pytest.mark.parametrize("size", [0, -4096, 4095, 4097, 0x1800])
def test_size_must_be_positive_multiple_of_4kib(size: int) -> None:
    with pytest.raises(PhysMemoryError):
        PhysMemory(size)


def test_buffer_must_match_size_and_be_writable() -> None:
    with pytest.raises(PhysMemoryError):
        PhysMemory(0x2000, buffer=bytearray(0x1000))
    with pytest.raises(PhysMemoryError):
        PhysMemory(0x1000, buffer=bytes(0x1000))
    buf = bytearray(0x1000)
    m = PhysMemory(0x1000, buffer=buf)
    m.write(0x10, b"abc")
    assert buf[0x10:0x13] == b"abc"  # the memory is the buffer, not a copy
    m.close()


# -- access ---------------------------------------------------------------------------------------


def test_u64_is_little_endian(memory: PhysMemory) -> None:
    memory.write_u64(0x1008, 0x0102_0304_0506_0708)
    assert memory.read(0x1008, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert memory.read_u64(0x1008) == 0x0102_0304_0506_0708
    memory.write(0x1010, (0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))
    assert memory.read_u64(0x1010) == (1 << 64) - 1


def test_read_write_zero_view(memory: PhysMemory) -> None:
    memory.write(0x100, b"hello")
    assert memory.read(0x100, 5) == b"hello"
    v = memory.view(0x100, 5)
    v[0:1] = b"J"
    assert memory.read(0x100, 5) == b"Jello"
    v.release()
    memory.zero(0x100, 2)
    assert memory.read(0x100, 5) == b"\0\0llo"
    memory.write(0x200, memoryview(bytearray(b"\x01" * 16)).cast("Q"))  # any buffer format
    assert memory.read(0x200, 16) == b"\x01" * 16
    assert memory.read(SIZE, 0) == b""  # an empty range at the end is inside


def test_accessors_take_phys_addr(memory: PhysMemory) -> None:
    """The accessors are annotated with ``int`` (what kvmpage passes) and take a `PhysAddr`
    too (they call ``int()`` on the address), which the ignores below are for."""
    memory.write_u64(PhysAddr(0x2000), 7)  # type: ignore[arg-type]
    assert memory.read_u64(PhysAddr(0x2000)) == 7  # type: ignore[arg-type]
    assert memory.read(PhysAddr(0x2000), 1) == b"\x07"  # type: ignore[arg-type]
    assert PageTable(memory, PhysAddr(0x2000))[0].raw == 7


def test_edges_are_inside(memory: PhysMemory) -> None:
    memory.write_u64(SIZE - 8, 0xAB)
    assert memory.read_u64(SIZE - 8) == 0xAB
    memory.write(SIZE - 1, b"\x01")
    assert memory.read(SIZE - 1, 1) == b"\x01"
    t = PageTable(memory, SIZE - 0x1000)
    assert t[511].raw == memory.read_u64(SIZE - 8)
    assert memory.contains(0, SIZE) and not memory.contains(0, SIZE + 1)
    assert memory.contains(SIZE, 0) and not memory.contains(-1, 0)


@pytest.mark.parametrize("name, call", OUT_OF_BOUNDS, ids=[n for n, _ in OUT_OF_BOUNDS])
def test_out_of_bounds_raises_and_writes_nothing(name: str, call: Call) -> None:
    m = filled()
    before = m.read(0, SIZE)
    with pytest.raises(PhysMemoryError):
        call(m)
    assert m.read(0, SIZE) == before
    m.close()


@pytest.mark.parametrize("addr", [1, 4, 7, 0x1004, SIZE - 4])
def test_u64_access_must_be_8_byte_aligned(addr: int) -> None:
    m = filled()
    before = m.read(0, SIZE)
    with pytest.raises(PhysMemoryError, match="aligned"):
        m.read_u64(addr)
    with pytest.raises(PhysMemoryError, match="aligned"):
        m.write_u64(addr, 0)
    assert m.read(0, SIZE) == before
    m.close()


@pytest.mark.parametrize("addr", [8, 0x800, 0x1FF8])
def test_table_must_be_4kib_aligned(memory: PhysMemory, addr: int) -> None:
    with pytest.raises(PhysMemoryError):
        PageTable(memory, addr)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_write_u64_value_must_fit(value: int) -> None:
    m = filled()
    with pytest.raises(PhysMemoryError):
        m.write_u64(0, value)
    assert m.read(0, 8) == b"\x5a" * 8
    m.close()


# -- closed memory ----------------------------------------------------------------------

ACCESSORS: list[tuple[str, Call]] = [
    ("read", lambda m: m.read(0, 8)),
    ("write", lambda m: m.write(0, b"x")),
    ("zero", lambda m: m.zero(0, 8)),
    ("view", lambda m: m.view(0, 8)),
    ("read_u64", lambda m: m.read_u64(0)),
    ("write_u64", lambda m: m.write_u64(0, 1)),
    ("table", lambda m: PageTable(m, 0)),
]


@pytest.mark.parametrize("name, call", ACCESSORS, ids=[n for n, _ in ACCESSORS])
def test_closed_memory_raises_phys_memory_error(name: str, call: Call) -> None:
    m = PhysMemory(SIZE)
    m.close()
    assert m.closed
    with pytest.raises(PhysMemoryError, match="closed"):
        call(m)


def test_close_is_idempotent_and_context_manager_closes() -> None:
    m = PhysMemory(SIZE)
    m.close()
    m.close()
    assert m.closed
    with PhysMemory(SIZE) as m2:
        m2.write_u64(0, 1)
        assert not m2.closed
    assert m2.closed


# -- mmap-backed memory -----------------------------------------------------------------


def test_mmap_backed_memory_works_and_mmap_closes_after_close() -> None:
    mm = mmap.mmap(-1, SIZE)
    m = PhysMemory(SIZE, buffer=mm)
    assert repr(m) == "PhysMemory(size=0x4000, backing=mmap)"
    m.write_u64(0x1008, 0xDEAD_BEEF)
    assert mm[0x1008:0x100C] == b"\xef\xbe\xad\xde"
    mm[0x2000:0x2008] = (0x1234).to_bytes(8, "little")
    assert m.read_u64(0x2000) == 0x1234
    t = PageTable(m, 0x3000)
    t[1] = 0x5003
    e = t[1]
    assert e.raw == 0x5003
    assert int.from_bytes(mm[0x3008:0x3010], "little") == 0x5003
    m.view(0, 16).release()
    with pytest.raises(BufferError):
        mm.close()  # still exported while the PhysMemory is open
    m.close()
    mm.close()  # live table / entry views do not hold the mmap
    assert mm.closed


def test_mmap_closes_after_a_mapper_used_the_memory() -> None:
    mm = mmap.mmap(-1, 0x10_0000)
    m = PhysMemory(0x10_0000, buffer=mm)
    mapper = OffsetPageTable(PageTable(m, 0x1000), VirtAddr(0))
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x2000, 0x10000, memory=m)
    flags = PageTableFlags.PRESENT | PageTableFlags.WRITABLE
    page: Page[Size4KiB] = Page.containing_address(VirtAddr(0x40_1000))
    mapper.map_to(page, PhysFrame.containing_address(PhysAddr(0x8_0000)), flags, alloc).ignore()
    assert mapper.translate_addr(VirtAddr(0x40_1234)) == PhysAddr(0x8_0234)
    m.close()
    mm.close()
    assert mm.closed


def test_mmap_closes_after_failed_construction() -> None:
    mm = mmap.mmap(-1, SIZE)
    with pytest.raises(PhysMemoryError):
        PhysMemory(2 * SIZE, buffer=mm)
    mm.close()
    assert mm.closed
