"""`OffsetPageTable`: all physical memory is mapped at a fixed virtual offset (MP-02).

Table frame ``p`` is reached at virtual address ``phys_offset + p``; that sum follows `VirtAddr`
addition rules, so an offset that pushes a table address past the top of the space or into the
canonical hole is a `Panic`, as in the crate (issue #290). The table itself is then read from the
`PhysMemory` that holds the level-4 table.
"""

from __future__ import annotations

from kvmpage.addr import VirtAddr
from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.paging.mapper.base import ADDRESS_MASK, Table
from kvmpage.paging.mapper.mapped import MappedPageTable
from kvmpage.paging.mapper.flush import Tlb
from kvmpage.paging.page import PhysFrame
from kvmpage.paging.table import PageTable


class PhysOffset:
    """The `PageTableFrameMapping` of an `OffsetPageTable`: frame ``p`` is at ``offset + p``."""

    def __init__(self, memory: PhysMemory, offset: VirtAddr) -> None:
        if type(offset) is not VirtAddr:
            raise TypeError(f"the physical-memory offset must be a VirtAddr, got {offset!r}")
        self.memory = memory
        self.offset = offset
        # Largest frame start p for which offset + p is still a canonical address in the same
        # half: below it no per-frame check is needed.
        top = 0x7FFF_FFFF_FFFF if offset._v < 1 << 47 else 0xFFFF_FFFF_FFFF_FFFF
        self._safe_below = min(top - offset._v + 1, memory.size)

    def virtual_address(self, phys: int) -> VirtAddr:
        """``offset + phys`` with the crate's checked `VirtAddr` addition."""
        return self.offset + phys

    def frame_to_pointer(self, frame: PhysFrame) -> PageTable:
        self.virtual_address(frame._start)
        return PageTable(self.memory, frame._start)

    def table_words(self, phys: int) -> Table:
        """Fast path of `frame_to_pointer` for the mapper's walks."""
        if phys < self._safe_below and phys + 4096 <= self.memory.size:
            return (self.memory._q, phys >> 3)
        self.virtual_address(phys)  # raises the crate's panic when the sum is not canonical
        raise PhysMemoryError(
            f"page table at {phys:#x} is outside memory [0, {self.memory.size:#x})"
        )


class OffsetPageTable(MappedPageTable):
    """A `MappedPageTable` whose mapping is a fixed ``phys_offset`` (MP-02)."""

    def __init__(
        self, level_4_table: PageTable, phys_offset: VirtAddr, *, tlb: Tlb | None = None
    ) -> None:
        mapping = PhysOffset(level_4_table.memory, phys_offset)
        super().__init__(level_4_table, mapping, tlb=tlb)
        self._offset_mapping = mapping

    def phys_offset(self) -> VirtAddr:
        """The virtual address at which physical address 0 is mapped."""
        return self._offset_mapping.offset

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        return self._offset_mapping.table_words(raw & ADDRESS_MASK)
