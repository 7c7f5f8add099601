"""Scaffolding shared by the software-only mapper tests (no /dev/kvm involved).

The layout is the checklist's probe arena: physical memory of 4 MiB, the level-4 table at
0x1000, a pool allocator handing out 0x2000, 0x3000, ... below 1 MiB, the recursive index 510
and an `OffsetPageTable` whose tables live at ``0xffff_8000_0000_0000 + phys``. No rule is
tested here; the test modules cite the rule ids they cover.

Test modules import it as ``from support import ...``: this folder has no ``__init__.py``, so
pytest (default "prepend" import mode) puts it on ``sys.path`` before importing them.
Anything one module alone needs, or that differs between modules (a mapping that logs its
calls, other memory sizes, extra `Env` methods), stays in that module.

Every mapper can be built at either depth (``levels=4``, the crate's, or ``levels=5``, kvmpage's
5-level extension): at 5 the table at P4_PHYS is a level-5 table, the recursive entry r is its
own, and `Env.entry_pa` walks five levels. The tests use 48-bit pages (`Page`), which a 5-level
mapper takes as they are (L5-04), so a test written for 4 levels runs at 5 unchanged as long as
it reaches entries through `Env.entry` rather than through P4_PHYS directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from kvmpage import PhysAddr, PhysMemory, VirtAddr
from kvmpage.paging import (
    ADDRESS_MASK,
    MappedPageTable,
    MapperFlush,
    MapperFlushAll,
    OffsetPageTable,
    Page,
    PageSize,
    PageTable,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    recursive_table_address,
)

#: ``pytestmark`` of the modules that use flush tokens: a token dropped unused fails the test.
#: The warning is raised from a token's __del__, where Python turns it into an "unraisable"
#: exception; the second filter makes pytest fail the test for that too.
STRICT_FLUSH_TOKENS = [
    pytest.mark.filterwarnings("error::kvmpage.paging.UnusedFlushWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

F = PageTableFlags
P = F.PRESENT
W = F.WRITABLE
U = F.USER_ACCESSIBLE
H = F.HUGE_PAGE
NX = F.NO_EXECUTE

MEM_SIZE = 0x40_0000
P4_PHYS = 0x1000
ALLOC_START = 0x2000
ALLOC_END = 0x10_0000
R = 510
OFFSET = 0xFFFF_8000_0000_0000


# -- pages, frames, indices -----------------------------------------------------------------


def page_type(size: type[PageSize]) -> type[Page[Any]]:
    """``Page[size]`` for a size known only at run time (a parametrized test): the very class
    the subscript gives. A type checker reads ``Page[x]`` as a type and refuses a variable x."""
    specialised: type[Page[Any]] = Page.__class_getitem__(size)
    return specialised


def frame_type(size: type[PageSize]) -> type[PhysFrame[Any]]:
    """``PhysFrame[size]`` for a size known only at run time (see `page_type`)."""
    specialised: type[PhysFrame[Any]] = PhysFrame.__class_getitem__(size)
    return specialised


def page4k(va: int) -> Page[Size4KiB]:
    return Page.from_start_address(VirtAddr(va))


def page2m(va: int) -> Page[Size2MiB]:
    return Page[Size2MiB].from_start_address(VirtAddr(va))


def page1g(va: int) -> Page[Size1GiB]:
    return Page[Size1GiB].from_start_address(VirtAddr(va))


def frame4k(pa: int) -> PhysFrame[Size4KiB]:
    return PhysFrame.from_start_address(PhysAddr(pa))


def frame2m(pa: int) -> PhysFrame[Size2MiB]:
    return PhysFrame[Size2MiB].from_start_address(PhysAddr(pa))


def frame1g(pa: int) -> PhysFrame[Size1GiB]:
    return PhysFrame[Size1GiB].from_start_address(PhysAddr(pa))


def idx(va: int, level: int) -> int:
    """The index of ``va`` in its level-``level`` table."""
    return (va >> (12 + 9 * (level - 1))) & 511


# -- building mappers -------------------------------------------------------------------------


class IdentityMapping:
    """A `PageTableFrameMapping` that reads each table where it is in the memory."""

    def __init__(self, memory: PhysMemory) -> None:
        self.memory = memory

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        return PageTable(self.memory, frame.start_address())


def pool_allocator(memory: PhysMemory) -> PoolFrameAllocator[Size4KiB]:
    """The probe arena's allocator: frames 0x2000, 0x3000, ... up to 1 MiB."""
    return PoolFrameAllocator(ALLOC_START, ALLOC_END, memory=memory)


def build_mapper(
    kind: str,
    memory: PhysMemory,
    *,
    r: int = R,
    mapping: Any = None,
    tlb: Any = None,
    levels: int = 4,
) -> Any:
    """A mapper of ``kind`` ("mapped", "offset" or "recursive") over the top-level table at
    P4_PHYS (a level-5 table with ``levels=5``). "mapped" reads tables through ``mapping`` (an
    `IdentityMapping` by default); "recursive" first writes the recursive entry ``r`` (pointing
    at P4_PHYS, PRESENT|WRITABLE). ``tlb`` is passed on (None: the mapper makes a
    `RecordingTlb`)."""
    top = PageTable(memory, P4_PHYS)
    if kind == "mapped":
        if mapping is None:
            mapping = IdentityMapping(memory)
        return MappedPageTable(top, mapping, tlb=tlb, levels=levels)
    if kind == "offset":
        return OffsetPageTable(top, VirtAddr(OFFSET), tlb=tlb, levels=levels)
    if kind == "recursive":
        memory.write_u64(P4_PHYS + 8 * r, P4_PHYS | int(P | W))
        table_addr = recursive_table_address(r, levels=levels)
        return RecursivePageTable(memory, table_addr, frame4k(P4_PHYS), tlb=tlb, levels=levels)
    raise AssertionError(kind)


@dataclass
class Env:
    """A mapper, its memory and its allocator, with raw access to the entries of a walk."""

    kind: str
    memory: PhysMemory
    mapper: Any
    alloc: PoolFrameAllocator[Size4KiB]

    @property
    def levels(self) -> int:
        """4, or 5 for a 5-level mapper (whose table at P4_PHYS is a level-5 table)."""
        return int(self.mapper.levels)

    def entry_pa(self, va: int, level: int) -> int:
        """Physical address of the level-``level`` entry on the walk of ``va``, following the
        address fields whatever the flags say."""
        table = P4_PHYS
        for lvl in range(self.levels, level, -1):
            table = self.memory.read_u64(table + 8 * idx(va, lvl)) & ADDRESS_MASK
        return table + 8 * idx(va, level)

    def table(self, k: int) -> int:
        """The frame of the ``k``-th table a test's first walk creates, counted as at 4 levels
        (0: the level-3 table, 1: the level-2, 2: the level-1): the allocator hands out
        0x2000, 0x3000, ...; at 5 levels the level-4 table takes 0x2000 first."""
        return ALLOC_START + 0x1000 * (k + self.levels - 4)

    def tables(self, n: int) -> list[int]:
        """The frames allocated once the first walk made ``n`` tables at 4 levels (one more at
        5 levels, the level-4 table, first)."""
        return [ALLOC_START + 0x1000 * k for k in range(n + self.levels - 4)]

    def entry(self, va: int, level: int) -> int:
        return self.memory.read_u64(self.entry_pa(va, level))

    def set_entry(self, va: int, level: int, raw: int) -> None:
        self.memory.write_u64(self.entry_pa(va, level), int(raw))

    def map(self, page: Any, frame: Any, flags: int = P | W, alloc: Any = None) -> None:
        self.mapper.map_to(page, frame, flags, alloc or self.alloc).ignore()

    def allocated(self) -> list[int]:
        return [int(f.start_address()) for f in self.alloc.allocated]


def make_env(kind: str, memory: PhysMemory | None = None, *, r: int = R, levels: int = 4) -> Env:
    """An `Env` of ``kind`` over ``memory`` (default: a fresh MEM_SIZE memory), see
    `build_mapper`."""
    if memory is None:
        memory = PhysMemory(MEM_SIZE)
    alloc = pool_allocator(memory)
    return Env(kind, memory, build_mapper(kind, memory, r=r, levels=levels), alloc)


# -- differential tests -----------------------------------------------------------------------


def mapper_op(e: Any, op: int, page: Any, frame: Any, f1: F, f2: F, va: int) -> Any:
    """Operation number ``op`` of the differential tests on ``e.mapper``."""
    m = e.mapper
    if op == 0:
        return m.map_to(page, frame, f1, e.alloc)
    if op == 1:
        return m.map_to_with_table_flags(page, frame, f1, f2, e.alloc)
    if op == 2:
        return m.unmap(page)
    if op == 3:
        return m.update_flags(page, f1)
    if op == 4:
        return m.set_flags_p4_entry(page, f1)
    if op == 5:
        return m.set_flags_p3_entry(page, f1)
    if op == 6:
        return m.set_flags_p2_entry(page, f1)
    if op == 7:
        return m.translate_page(page)
    if op == 8:
        return m.translate(m.depth.addr_type(va + 0x123))  # (a VirtAddr57 at 5 levels)
    if op == 9:
        return m.translate_addr(m.depth.addr_type(va + 0x123))
    raise AssertionError(op)


def returned(v: Any) -> Any:
    """What a call that returned ``v`` did, comparable across mappers: flush tokens are consumed
    and reduced to their page."""
    if isinstance(v, MapperFlush):
        v.ignore()
        return ("flush", v.page())
    if isinstance(v, MapperFlushAll):
        v.ignore()
        return ("flush_all",)
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], MapperFlush):
        v[1].ignore()
        return ("unmapped", v[0], v[1].page())
    return ("value", v)
