"""`OffsetPageTable`: all physical memory is mapped at a fixed virtual offset (MP-02).

Table frame ``p`` is reached at virtual address ``phys_offset + p``; that sum follows `VirtAddr`
addition rules, so an offset that pushes a table address past the top of the space or into the
canonical hole is a `Panic`, as in the crate (issue #290). The table itself is then read from the
`PhysMemory` that holds the level-4 table. With ``levels=5`` (L5-04) the table given is a PML5,
and the sum follows the 57-bit rules of `VirtAddr57` (an offset given as a `VirtAddr` is widened).
"""

from __future__ import annotations

from typing import Any

from kvmpage.addr import AnyVirtAddr, PhysAddr, VirtAddr, _VirtAddrBase
from kvmpage.memory import PhysicalMemory, PhysMemory, PhysMemoryError
from kvmpage.paging.frame_alloc import FrameAllocator
from kvmpage.paging.mapper.checks import table_arg
from kvmpage.paging.mapper.depth import DEPTH4, Depth, depth_arg
from kvmpage.paging.mapper.entries import ADDRESS_MASK, S, Table
from kvmpage.paging.mapper.fast import map_4k_fast
from kvmpage.paging.mapper.flush import MapperFlush, Tlb
from kvmpage.paging.mapper.mapped import MappedPageTable
from kvmpage.paging.page import Page, PhysFrame, Size4KiB
from kvmpage.paging.table import PageTable


class PhysOffset:
    """The `PageTableFrameMapping` of an `OffsetPageTable`: frame ``p`` is at ``offset + p``."""

    def __init__(self, memory: PhysicalMemory, offset: AnyVirtAddr, depth: Depth = DEPTH4) -> None:
        if not isinstance(memory, PhysMemory):
            raise TypeError(
                "an OffsetPageTable needs its tables in a flat PhysMemory, got "
                f"{type(memory).__name__} (use a MappedPageTable over a memory image)"
            )
        if type(offset) not in depth.addr_types:
            kinds = " or ".join(t.__name__ for t in depth.addr_types)
            raise TypeError(f"the physical-memory offset must be a {kinds}, got {offset!r}")
        self.memory = memory
        self.offset = offset
        #: the offset in the depth's own address type (a VirtAddr widened at 5 levels)
        self._base: _VirtAddrBase = depth.addr_type(offset._v)
        # Table addresses below this bound are inside memory (the whole table) and give a
        # canonical offset + p, so the hot walks need a single comparison per level.
        top = depth.hole - 1 if offset._v < depth.hole else 0xFFFF_FFFF_FFFF_FFFF
        self._safe_below = 0 if memory.has_holes else min(top - offset._v + 1, memory.size - 4095)

    def virtual_address(self, phys: int) -> _VirtAddrBase:
        """``offset + phys`` with the crate's checked `VirtAddr` addition (`VirtAddr57` at 5
        levels)."""
        return self._base + phys

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        self.virtual_address(frame._start)
        return PageTable(self.memory, frame._start)

    def table_words(self, phys: int) -> Table:
        """Fast path of `frame_to_pointer` for the mapper's walks."""
        if phys < self._safe_below:
            return (self.memory.words, phys >> 3)
        self.virtual_address(phys)  # raises the crate's panic when the sum is not canonical
        if phys + 4096 > self.memory.size:
            raise PhysMemoryError(
                f"page table at {phys:#x} is outside memory [0, {self.memory.size:#x})"
            )
        return self.memory.frame_words(phys)  # (a hole raises AbsentMemoryError)


class OffsetPageTable(MappedPageTable):
    """A `MappedPageTable` whose mapping is a fixed ``phys_offset`` (MP-02)."""

    def __init__(
        self,
        level_4_table: PageTable,
        phys_offset: AnyVirtAddr,
        *,
        tlb: Tlb | None = None,
        levels: int = 4,
    ) -> None:
        """``level_4_table``: the PML4, or with ``levels=5`` the PML5; ``phys_offset``: where
        physical address 0 is mapped (a `VirtAddr`, at 5 levels also a `VirtAddr57`)."""
        table_arg(level_4_table)
        mapping = PhysOffset(level_4_table.memory, phys_offset, depth_arg(levels))
        super().__init__(level_4_table, mapping, tlb=tlb, levels=levels)
        self._offset_mapping = mapping
        # the inlined paths below: the 4 KiB page type they take besides Page, the address
        # type of the inlined translate_addr (4 levels only), and where the tables are
        self._fast_page: type = self.depth.page_of_level[1]
        self._fast_addr: type | None = VirtAddr if levels == 4 else None
        self._fast_where = (
            self._l4_table[1] << 3, mapping._safe_below, mapping.memory.words,
            self.depth.parent_shifts,
        )  # fmt: skip

    def phys_offset(self) -> AnyVirtAddr:
        """The virtual address at which physical address 0 is mapped."""
        return self._offset_mapping.offset

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        return self._offset_mapping.table_words(raw & ADDRESS_MASK)

    def _check_new_table(self, phys: int) -> None:
        self.memory.check(phys, 4096)  # all tables live in the level-4 table's memory

    # -- fast paths -----------------------------------------------------------------------
    # The two hottest operations, inlined for the common case. Each falls back to the shared
    # engine as soon as anything is unusual, and writes nothing before it is sure not to.

    def translate_addr(self, addr: AnyVirtAddr) -> PhysAddr | None:
        if type(addr) is not self._fast_addr:  # (4 levels only: 5 take the shared engine)
            return super().translate_addr(addr)
        va = addr._v
        q = self._offset_mapping.memory.words
        limit = self._offset_mapping._safe_below
        e = q[self._l4_table[1] + ((va >> 39) & 511)]
        if not e & 1:
            return None
        t = e & 0x000F_FFFF_FFFF_F000
        if e & 0x80 or t >= limit:
            return super().translate_addr(addr)
        e = q[(t >> 3) + ((va >> 30) & 511)]
        if not e & 1:
            return None
        if e & 0x80:
            return PhysAddr._raw((e & 0x000F_FFFF_C000_0000) | (va & 0x3FFF_FFFF))
        t = e & 0x000F_FFFF_FFFF_F000
        if t >= limit:
            return super().translate_addr(addr)
        e = q[(t >> 3) + ((va >> 21) & 511)]
        if not e & 1:
            return None
        if e & 0x80:
            return PhysAddr._raw((e & 0x000F_FFFF_FFE0_0000) | (va & 0x1F_FFFF))
        t = e & 0x000F_FFFF_FFFF_F000
        if t >= limit:
            return super().translate_addr(addr)
        e = q[(t >> 3) + ((va >> 12) & 511)]
        if e == 0:
            return None
        return PhysAddr._raw((e & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF))

    def _map(
        self,
        page: Page[S],
        frame: PhysFrame[S],
        f: int,
        insert: int,
        frame_allocator: FrameAllocator[Any],
    ) -> MapperFlush[S]:
        # Fast path for a 4 KiB page (`_map_4k_fast`; the flags and the allocator are checked
        # already); new parents need PRESENT and not HUGE_PAGE in the insert flags, else the
        # general path (and its panics) decides.
        if (
            (type(page) is Page or type(page) is self._fast_page)
            and type(frame) is PhysFrame
            and not f & 0x80
        ):
            done = map_4k_fast(
                self, page, frame, f, insert, frame_allocator,
                insert if insert & 0x81 == 1 else None, self._fast_where,
            )  # fmt: skip
            if done is not None:
                return done
        return super()._map(page, frame, f, insert, frame_allocator)
