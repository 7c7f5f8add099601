"""`OffsetPageTable`: all physical memory is mapped at a fixed virtual offset (MP-02).

Table frame ``p`` is reached at virtual address ``phys_offset + p``; that sum follows `VirtAddr`
addition rules, so an offset that pushes a table address past the top of the space or into the
canonical hole is a `Panic`, as in the crate (issue #290). The table itself is then read from the
`PhysMemory` that holds the level-4 table. With ``levels=5`` (L5-04) the table given is a PML5,
and the sum follows the 57-bit rules of `VirtAddr57` (an offset given as a `VirtAddr` is widened).
"""

from __future__ import annotations

from kvmpage.addr import AnyVirtAddr, _VirtAddrBase
from kvmpage.memory import PhysicalMemory, PhysMemory, PhysMemoryError
from kvmpage.paging.mapper.checks import table_arg
from kvmpage.paging.mapper.depth import DEPTH4, Depth, depth_arg
from kvmpage.paging.mapper.entries import ADDRESS_MASK, PRESENT, Table
from kvmpage.paging.mapper.fast import FastMapper
from kvmpage.paging.mapper.flush import Tlb
from kvmpage.paging.mapper.mapped import MappedPageTable
from kvmpage.paging.page import PhysFrame, Size4KiB
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


class OffsetPageTable(MappedPageTable, FastMapper):
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
        # the inlined map_to and translate_addr (`FastMapper`): every table is in the level-4
        # table's memory, and one below _safe_below (in words: phys >> 3 below the rounded-up
        # _safe_below / 8) can be read there without the checks of table_words
        self._set_fast_paths(
            mapping.memory.words, self._l4_table[1], (mapping._safe_below + 7) >> 3, (0, 0, 0),
            stop=PRESENT, leaf_bad=0,
        )  # fmt: skip

    def phys_offset(self) -> AnyVirtAddr:
        """The virtual address at which physical address 0 is mapped."""
        return self._offset_mapping.offset

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        return self._offset_mapping.table_words(raw & ADDRESS_MASK)

    def _check_new_table(self, phys: int) -> None:
        self.memory.check(phys, 4096)  # all tables live in the level-4 table's memory
