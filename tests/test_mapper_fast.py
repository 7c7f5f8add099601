"""The inlined paths of `kvmpage.paging.mapper.fast.FastMapper` agree with the shared engine.

`OffsetPageTable` and `RecursivePageTable` inline `map_to` of a 4 KiB page and `translate_addr`
(at 4 and 5 levels), and hand over to `TableMapper` whenever something is unusual. Here both
run side by side over random, partly corrupted tables: the inlined path on one copy of the
memory, the shared engine (`TableMapper._map`, `TableMapper.translate_addr`, called
explicitly) on another. Results, exceptions (type and message), the frames taken from the
allocator and the memory afterwards must be the same.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest

from kvmpage import PhysAddr, PhysMemory, VirtAddr, VirtAddr57
from kvmpage.paging import (
    BumpFrameAllocator,
    OffsetPageTable,
    PageTableFlags,
    PhysFrame,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    TableMapper,
)
from kvmpage.paging.mapper.fast import FastMapper
from kvmpage.paging.page57 import PAGE_TYPES
from kvmpage.paging.table import PageTable

MEM = 96 * 4096
TOP = 0x1000
R = 300  # the recursive index
ENTRY_BITS = [1, 2, 4, 0x20, 0x80, 1 << 63]


def _tables(rng: random.Random, kind: str, levels: int, break_r: bool) -> bytearray:
    """A memory with tables made by mapping random pages of all three sizes, then partly
    corrupted: random entries of the tables made get random frames (some outside the
    memory, some other tables) and random flags (PS, no PRESENT...). The recursive mapper's
    entry r points back at the top-level table, unless ``break_r`` (then the fast paths
    must stand aside). The tables lie in the lower half of the memory."""
    memory = PhysMemory(MEM)
    if kind == "recursive":
        memory.write_u64(TOP + 8 * R, TOP | 3)
    mapper = _mapper(kind, memory, levels)
    alloc: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(0x2000, MEM // 2)
    pages = PAGE_TYPES[levels]
    addr_type = VirtAddr57 if levels == 5 else VirtAddr
    for _ in range(60):
        size: Any = rng.choice([Size4KiB, Size4KiB, Size4KiB, Size2MiB, Size1GiB])
        page = pages[size].containing_address(addr_type(_va(rng, levels)))
        frame: Any = PhysFrame[size].containing_address(PhysAddr(rng.randrange(0, 1 << 34)))
        with contextlib.suppress(Exception):  # already mapped, huge parent...
            mapper.map_to(page, frame, PageTableFlags(3), alloc).ignore()
    tables = [TOP, *(f.start_address().as_u64() for f in alloc.allocated)]
    for _ in range(12):
        t, i = rng.choice(tables), rng.randrange(512)
        if rng.random() < 0.7:  # mostly the entries in use
            i = rng.choice([i, *(k for k in range(512) if memory.read_u64(t + 8 * k))])
        if kind == "recursive" and (t, i) == (TOP, R):
            continue  # entry r is ``break_r``'s
        raw = rng.choice(tables) if rng.random() < 0.6 else rng.randrange(0, 1 << 24) << 12
        for bit in ENTRY_BITS:
            if rng.random() < (0.8 if bit == 1 else 0.15):
                raw |= bit
        memory.write_u64(t + 8 * i, raw)
    if kind == "recursive" and break_r:
        memory.write_u64(TOP + 8 * R, rng.choice([0, TOP | 0x83, 0x2000 | 3, TOP | 2]))
    return bytearray(memory._buf)


def _mapper(kind: str, memory: PhysMemory, levels: int) -> FastMapper:
    if kind == "offset":
        return OffsetPageTable(PageTable(memory, TOP), VirtAddr(0), levels=levels)
    return RecursivePageTable.new_unchecked(
        memory, R, PhysFrame.containing_address(PhysAddr(TOP)), levels=levels
    )


def _va(rng: random.Random, levels: int) -> int:
    """A canonical address whose indices mostly hit the entries the tables hold."""
    v = 0
    for _ in range(levels):
        v = (v << 9) | rng.choice([0, 1, 2, 5, R, 511, rng.randrange(512)])
    v = (v << 12) | rng.randrange(4096)
    top_bit = 9 * levels + 11
    return v | (-(1 << top_bit) & ((1 << 64) - 1)) if v >> top_bit & 1 else v


def _outcome(fn: Any, *args: Any) -> Any:
    """What ``fn(*args)`` did: its value, its token (used up), or its exception."""
    try:
        value = fn(*args)
    except Exception as exc:  # every failure, also a fault in the recursive walk
        return ("raised", type(exc).__name__, str(exc))
    if hasattr(value, "ignore"):
        value.ignore()
        return ("token", type(value).__name__, value.page())
    return ("value", value)


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("kind", ["offset", "recursive"])
@pytest.mark.parametrize("seed", range(6))
def test_inlined_translate_addr_is_the_engines(kind: str, levels: int, seed: int) -> None:
    """The inlined `translate_addr` returns, or raises, what `TableMapper.translate_addr`
    does, for addresses of both types at 5 levels."""
    rng = random.Random(seed * 10 + levels)
    memory = PhysMemory(MEM, buffer=_tables(rng, kind, levels, break_r=seed == 5))
    mapper = _mapper(kind, memory, levels)
    addr_types = (VirtAddr, VirtAddr57) if levels == 5 else (VirtAddr,)
    seen = set()
    for _ in range(1500):
        va = _va(rng, levels)
        addr_type = rng.choice(addr_types)
        if addr_type is VirtAddr and va >> 47 not in (0, (1 << 17) - 1):
            continue  # not a 48-bit canonical address
        addr = addr_type(va)
        fast = _outcome(mapper.translate_addr, addr)
        engine = _outcome(TableMapper.translate_addr, mapper, addr)
        assert fast == engine, (kind, levels, hex(va))
        seen.add("raised" if fast[0] == "raised" else fast[1] is not None)
    if kind == "recursive" and seed == 5:  # entry r is broken: every walk faults
        assert seen == {"raised"}, seen
    else:
        assert {True, False} <= seen, seen  # some addresses map, some do not


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("kind", ["offset", "recursive"])
@pytest.mark.parametrize("seed", range(6))
def test_inlined_map_to_is_the_engines(kind: str, levels: int, seed: int) -> None:
    """The inlined 4 KiB `map_to` (and `map_to_with_table_flags`) leaves the memory, the
    allocator and the result as `TableMapper._map` does, one random call after another on
    two copies of the same tables (allocators that run past the memory too)."""
    rng = random.Random(seed * 10 + levels + 1000)
    start = _tables(rng, kind, levels, break_r=seed == 5)
    memories = [PhysMemory(MEM, buffer=bytearray(start)) for _ in range(2)]
    mappers = [_mapper(kind, m, levels) for m in memories]
    # fresh frames, as the crate's FrameAllocator promises; the last ones outside the memory
    allocs: list[BumpFrameAllocator[Size4KiB]] = [
        BumpFrameAllocator(MEM // 2, MEM + 0x4000) for _ in range(2)
    ]
    page_type = PAGE_TYPES[levels][Size4KiB]
    addr_type = VirtAddr57 if levels == 5 else VirtAddr
    seen = set()
    for _ in range(400):
        va = _va(rng, levels)
        page = page_type.containing_address(addr_type(va))
        frame: PhysFrame[Size4KiB] = PhysFrame.containing_address(
            PhysAddr(rng.randrange(0, 1 << 30))
        )
        flags = rng.choice([3, 7, 1, 0x8000_0000_0000_0003, 0x83, 2])
        insert = flags & 7 if rng.random() < 0.7 else rng.choice([0, 1, 3, 0x81, 0x23])
        results = [
            _outcome(mappers[0]._map, page, frame, flags, insert, allocs[0]),
            _outcome(TableMapper._map, mappers[1], page, frame, flags, insert, allocs[1]),
        ]
        assert results[0] == results[1], (kind, levels, hex(va), hex(flags), hex(insert))
        assert allocs[0].allocated == allocs[1].allocated
        assert memories[0]._buf == memories[1]._buf
        seen.add(results[0][0] if results[0][0] == "token" else results[0][1])
    if kind == "recursive" and memories[0].read_u64(TOP + 8 * R) & 0x81 != 1:
        pass  # entry r was broken (break_r, or PS OR'ed into it on a walk): walks fault
    else:
        assert "token" in seen and len(seen) >= 3, seen


def test_the_flags_shortcut_of_map_to_checks_like_flags_arg() -> None:
    """`map_to` takes `PageTableFlags` without calling `flags_arg`, but bad bits still fail
    the same way, before anything is written."""
    memory = PhysMemory(MEM)
    mapper = _mapper("offset", memory, 4)
    page = PAGE_TYPES[4][Size4KiB].containing_address(VirtAddr(0x1000))
    frame: PhysFrame[Size4KiB] = PhysFrame.containing_address(PhysAddr(0x5000))
    alloc: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(0x2_0000, MEM)
    with pytest.raises(ValueError, match="address field"):
        mapper.map_to(page, frame, PageTableFlags(1 << 40 | 3), alloc)
    assert bytes(memory._buf) == bytes(MEM)
    mapper.map_to(page, frame, PageTableFlags.PRESENT, alloc).ignore()
    assert mapper.translate_addr(VirtAddr(0x1234)) == PhysAddr(0x5234)
