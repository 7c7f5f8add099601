"""`RecursivePageTable`: tables reached through the PML4's recursive entry (R-01..R-16).

Level-4 entry ``r`` points back at the level-4 table itself, so the tables are visible at fixed
virtual addresses: the PML4 at (r, r, r, r), the level-3 table of a page at (r, r, r, p4), its
level-2 table at (r, r, p4, p3) and its level-1 table at (r, p4, p3, p2) (R-03). Like the crate,
this mapper never follows a table's physical address: it computes those virtual addresses and
resolves them with a software walk of the active tables (``cr3``), as the MMU would. So every
quirk of the crate comes out the same way: a parent that is not present makes the access fault
(`SoftPageFault`), and a huge parent leads into the huge page's own memory (R-04, R-10).
"""

from __future__ import annotations

from typing import Any

from kvmpage.addr import PhysAddr, VirtAddr, canonicalize
from kvmpage.index import PageTableIndex
from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.paging.frame_alloc import FrameAllocator
from kvmpage.paging.mapper.base import (
    ADDRESS_MASK,
    HUGE_PAGE,
    PRESENT,
    WRITABLE,
    S,
    Table,
    TableMapper,
)
from kvmpage.paging.mapper.checks import cr3_arg, index_arg, memory_arg, tlb_arg
from kvmpage.paging.mapper.errors import (
    NotActive,
    NotRecursive,
)
from kvmpage.paging.mapper.fast import map_4k_fast
from kvmpage.paging.mapper.flush import MapperFlush, Tlb
from kvmpage.paging.mapper.rules import RECURSIVE_RULES
from kvmpage.paging.page import Page, PhysFrame, Size4KiB
from kvmpage.paging.walk import SoftPageFault, resolve, resolve_below


def recursive_table_address(r: int, *indices: int) -> VirtAddr:
    """The virtual address (r, ..., indices) padded on the left with ``r`` to four indices.

    ``r`` and up to three ``indices``, each an int in 0..511 (`TypeError` / `ValueError`
    otherwise: 512 or -1 used to give a wrong address silently)."""
    if len(indices) > 3:
        raise TypeError(f"recursive_table_address takes r and 3 indices at most, not {indices}")
    r = index_arg(r, "r")
    indices = tuple(index_arg(i, f"index {n}") for n, i in enumerate(indices, 1))
    idx = (r,) * (4 - len(indices)) + indices
    v = (idx[0] << 39) | (idx[1] << 30) | (idx[2] << 21) | (idx[3] << 12)
    return VirtAddr._raw(canonicalize(v))


class RecursivePageTable(TableMapper):
    """Mapper over a recursively mapped PML4 whose active copy is the CR3 frame ``cr3``.

    ``RecursivePageTable(memory, table_addr, cr3)`` is the crate's ``new``: ``table_addr`` is the
    virtual address of the PML4 and must be (r, r, r, r, offset 0) (else `NotRecursive`); entry
    ``r`` of the table found there must point at ``cr3`` (else `NotActive`). The crate reads CR3
    itself; here you pass the value the CPU would hold. Where the crate would hold a reference
    that cannot exist (``table_addr`` does not resolve under ``cr3``, or resolves outside the
    memory), the result is `NotActive` too.
    """

    RULES = RECURSIVE_RULES

    def __init__(
        self,
        memory: PhysMemory,
        table_addr: VirtAddr,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
    ) -> None:
        memory_arg(memory)
        if type(table_addr) is not VirtAddr:
            raise TypeError(f"table_addr must be a VirtAddr, got {table_addr!r}")
        cr3_arg(cr3)
        tlb_arg(tlb)
        page: Page[Size4KiB] = Page.containing_address(table_addr)
        r = int(page.p4_index())
        if not (
            int(page.p3_index()) == r
            and int(page.p2_index()) == r
            and int(page.p1_index()) == r
            and table_addr._v & 0xFFF == 0  # a table reference is always page aligned
        ):
            raise NotRecursive()
        # The table the crate would dereference is whatever the MMU finds at table_addr. If the
        # walk faults or leaves the memory, no table at table_addr can hold a recursive entry
        # pointing at CR3 (e.g. entry r holds the table's virtual address, issue #209).
        try:
            table_phys = resolve(memory, cr3._start, page._start)
            raw = memory.read_u64(table_phys + 8 * r)
        except (SoftPageFault, PhysMemoryError) as fault:
            raise NotActive(f"{table_addr!r} does not resolve under CR3: {fault}") from None
        if not raw & PRESENT or raw & HUGE_PAGE or raw & ADDRESS_MASK != cr3._start:
            raise NotActive(f"entry {r} is {raw:#x}, CR3 frame is {cr3._start:#x}")
        self._init(memory, r, cr3, tlb)

    @classmethod
    def new(
        cls,
        memory: PhysMemory,
        table_addr: VirtAddr,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
    ) -> RecursivePageTable:
        """Same as the constructor (the crate's name)."""
        return cls(memory, table_addr, cr3, tlb=tlb)

    @classmethod
    def new_unchecked(
        cls,
        memory: PhysMemory,
        recursive_index: int,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
    ) -> RecursivePageTable:
        """No checks of the tables (R-02): the caller promises entry ``recursive_index`` is the
        recursive one. The arguments' types are checked all the same."""
        memory_arg(memory)
        cr3_arg(cr3)
        tlb_arg(tlb)
        if isinstance(recursive_index, bool):
            raise TypeError("recursive_index must be an int or a PageTableIndex, got a bool")
        self = object.__new__(cls)
        self._init(memory, int(PageTableIndex(recursive_index)), cr3, tlb)
        return self

    memory: PhysMemory

    def _init(self, memory: PhysMemory, r: int, cr3: PhysFrame[Size4KiB], tlb: Tlb | None) -> None:
        if not isinstance(memory, PhysMemory):
            raise TypeError(
                "a RecursivePageTable needs its tables in a flat PhysMemory, got "
                f"{type(memory).__name__} (use a MappedPageTable over a memory image)"
            )
        TableMapper.__init__(self, memory, tlb)
        self.recursive_index = r
        self.cr3 = cr3
        # (r, r, ..., r) prefixes of the recursive addresses, by the level of the table reached
        self._r_prefix = {level: sum(r << (9 * k) for k in range(level)) for level in (1, 2, 3, 4)}

    def table_address(self) -> VirtAddr:
        """The virtual address of the PML4: (r, r, r, r)."""
        return recursive_table_address(self.recursive_index)

    def _words_at(self, va: int) -> Table:
        """The table at the (recursive) virtual address ``va``, found as the MMU would."""
        memory, p4 = self.memory, self.cr3._start
        r = self.recursive_index
        level = 4
        if p4 + 4096 <= memory.size:
            entry = memory.words[(p4 >> 3) + r]
            if entry & 0x81 == 1 and entry & 0x000F_FFFF_FFFF_F000 == p4:
                # entry r leads back to this table at every level: skip the leading r indices
                while level and (va >> (3 + 9 * level)) & 511 == r:
                    level -= 1
        if level == 4:
            phys = resolve(memory, p4, va)
        elif level == 0:
            phys = p4 | (va & 0xFFF)
        else:
            phys = resolve_below(memory, p4, va, level)
        if phys + 4096 > self.memory.size:
            self.memory.check(phys, 4096)
        return (self.memory.words, phys >> 3)

    def _p4(self) -> Table:
        return self._words_at(canonicalize(self._r_prefix[4] << 12))

    def _table_va(self, va: int, level: int) -> int:
        """The recursive address of the table of ``level`` on the walk of ``va``."""
        # (r x level, then va's top indices)
        used = 9 * (4 - level)
        indices = (va >> (12 + 9 * level)) & ((1 << used) - 1)
        return canonicalize(((self._r_prefix[level] << used) | indices) << 12)

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        return self._words_at(self._table_va(va, child_level))

    def _prepare_range_walk(self) -> None:
        self._p4()  # where map_to faults first, if it does
        if not self._self_mapped():
            raise ValueError(
                f"map_range needs entry {self.recursive_index} of the level-4 table at "
                f"{self.cr3._start:#x} to point back at it"
            )

    def _child_of(self, raw: int, va: int, child_level: int) -> Table:
        # Entry r points back at the level-4 table (_prepare_range_walk), so the recursive
        # address of the child resolves through the leading r's to the level-4 table, then
        # through the parents above `raw` on the walk of va (already followed by the caller:
        # present, not huge, inside memory; a map_to loop never takes PRESENT away), and last
        # through `raw` itself (not huge: checked), as the walk's level-1 step. That is what
        # _words_at finds once `raw` is stored.
        if not raw & PRESENT:
            raise SoftPageFault(self._table_va(va, child_level), 1, "is not present")
        phys = raw & ADDRESS_MASK
        if phys + 4096 > self.memory.size:
            self.memory.check(phys, 4096)
        return (self.memory.words, phys >> 3)

    def _skip_in_clean_up(self, level: int, index: int) -> bool:
        return level == 4 and index == self.recursive_index  # C-11

    # -- fast paths -----------------------------------------------------------------------
    # When entry r of the active PML4 points back at it (present, PS clear), every recursive
    # address resolves level by level through the tables themselves: the table of a page at
    # (r, r, r, p4) is the frame of PML4[p4], and so on down. The two hottest operations use
    # that directly, and hand over to the shared engine as soon as anything is unusual (a
    # missing or huge parent on the recursive path, memory bounds), so results are the same.

    def _self_mapped(self) -> bool:
        p4 = self.cr3._start
        if p4 + 4096 > self.memory.size:
            return False
        entry = self.memory.words[(p4 >> 3) + self.recursive_index]
        return entry & 0x81 == 1 and entry & _MASK == p4

    def translate_addr(self, addr: VirtAddr) -> PhysAddr | None:
        if type(addr) is not VirtAddr or not self._self_mapped():
            return super().translate_addr(addr)
        va, q, limit = addr._v, self.memory.words, self.memory.size - 4096
        raw = q[(self.cr3._start >> 3) + ((va >> 39) & 511)]
        if raw == 0:
            return None  # raw == 0, not PRESENT, decides
        if raw & 0x81 != 1 or raw & _MASK > limit:
            return super().translate_addr(addr)  # huge PML4E panics; a fault on the way
        raw = q[((raw & _MASK) >> 3) + ((va >> 30) & 511)]
        if raw == 0:
            return None
        if raw & HUGE_PAGE:
            return PhysAddr._raw((raw & 0x000F_FFFF_C000_0000) | (va & 0x3FFF_FFFF))
        if not raw & PRESENT or raw & _MASK > limit:
            return super().translate_addr(addr)
        raw = q[((raw & _MASK) >> 3) + ((va >> 21) & 511)]
        if raw == 0:
            return None
        if raw & HUGE_PAGE:
            return PhysAddr._raw((raw & 0x000F_FFFF_FFE0_0000) | (va & 0x1F_FFFF))
        if not raw & PRESENT or raw & _MASK > limit:
            return super().translate_addr(addr)
        raw = q[((raw & _MASK) >> 3) + ((va >> 12) & 511)]
        if raw == 0:
            return None
        if raw & HUGE_PAGE:
            return super().translate_addr(addr)  # panics
        return PhysAddr._raw((raw & _MASK) | (va & 0xFFF))

    def _map(
        self,
        page: Page[S],
        frame: PhysFrame[S],
        f: int,
        insert: int,
        frame_allocator: FrameAllocator[Any],
    ) -> MapperFlush[S]:
        # Fast path for a 4 KiB page (`_map_4k_fast`; the flags and the allocator are checked
        # already) while entry r points back at the PML4: then each table's recursive address
        # resolves to the frame its parent names. New parents get PRESENT | WRITABLE as well
        #
        q, limit, t = self.memory.words, self.memory.size - 4096, self.cr3._start
        if (
            type(page) is Page
            and type(frame) is PhysFrame
            and not (f | insert) & HUGE_PAGE
            and t <= limit
            and q[(t >> 3) + self.recursive_index] & (_MASK | 0x81) == t | 1  # self-mapped
        ):
            done = map_4k_fast(
                self, page, frame, f, insert, frame_allocator, t, limit + 1,
                insert | PRESENT | WRITABLE, q,
            )  # fmt: skip
            if done is not None:
                return done
        return super()._map(page, frame, f, insert, frame_allocator)


_MASK = ADDRESS_MASK
