"""`MappedPageTable`: a mapper that reaches every table through a `PageTableFrameMapping`.

In the crate the mapping turns a table's physical frame into a pointer (MP-01); here it turns it
into a `PageTable` view, usually of the same `PhysMemory` that holds the level-4 table. With
``levels=5`` the table given is a level-5 table and the mapper walks five levels (L5-04).
"""

from __future__ import annotations

from typing import Protocol

from kvmpage.memory import PhysicalMemory
from kvmpage.paging.mapper.base import TableMapper
from kvmpage.paging.mapper.checks import table_arg, tlb_arg
from kvmpage.paging.mapper.depth import depth_arg
from kvmpage.paging.mapper.entries import ADDRESS_MASK, Table
from kvmpage.paging.mapper.flush import Tlb
from kvmpage.paging.page import PhysFrame, Size4KiB
from kvmpage.paging.table import PageTable


class PageTableFrameMapping(Protocol):
    """Turns the physical frame of a page table into an accessible `PageTable` (MP-01).

    The implementer promises that the returned table really is the frame's contents, and that all
    frames of the hierarchy are reachable.
    """

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        """The table stored in ``frame``."""
        ...


class PhysicalFrames:
    """The `PageTableFrameMapping` where a table's physical address is where it is read: the
    tables of ``memory`` seen directly (a memory image, a layout built in a plain memory)."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self.memory = memory

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        return PageTable(self.memory, frame.start_address().as_u64())


class MappedPageTable(TableMapper):
    """Mapper over tables reached through ``page_table_frame_mapping`` (MP-01..MP-30)."""

    def __init__(
        self,
        level_4_table: PageTable,
        page_table_frame_mapping: PageTableFrameMapping,
        *,
        tlb: Tlb | None = None,
        levels: int = 4,
    ) -> None:
        """``level_4_table``: the active (or to-be-active) PML4, or with ``levels=5`` the PML5;
        ``tlb``: where flushes go."""
        table_arg(level_4_table)
        depth = depth_arg(levels)
        if not callable(getattr(page_table_frame_mapping, "frame_to_pointer", None)):
            raise TypeError(
                "page_table_frame_mapping must have a frame_to_pointer() method, got "
                f"{type(page_table_frame_mapping).__name__}"
            )
        tlb_arg(tlb)
        super().__init__(level_4_table.memory, tlb, depth)
        self._l4 = level_4_table
        self._l4_table: Table = (level_4_table._q, level_4_table._base)
        self._mapping = page_table_frame_mapping

    def page_table_frame_mapping(self) -> PageTableFrameMapping:
        """The frame-to-table mapping this mapper uses."""
        return self._mapping

    def top_level_table(self) -> PageTable:
        return self._l4

    def _top(self) -> Table:
        return self._l4_table

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        table = self._mapping.frame_to_pointer(PhysFrame._make(raw & ADDRESS_MASK))
        return (table._q, table._base)

    def _check_new_table(self, phys: int) -> None:
        # The mapping decides where a table frame's contents are (MP-01), possibly in another
        # memory than the level-4 table's: like the crate, trust it. A frame it cannot reach
        # fails in frame_to_pointer, after the entry was linked (MP-04 order).
        pass
