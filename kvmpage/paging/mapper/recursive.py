"""`RecursivePageTable`: tables reached through the PML4's recursive entry (R-01..R-16).

Level-4 entry ``r`` points back at the level-4 table itself, so the tables are visible at fixed
virtual addresses: the PML4 at (r, r, r, r), the level-3 table of a page at (r, r, r, p4), its
level-2 table at (r, r, p4, p3) and its level-1 table at (r, p4, p3, p2) (R-03). At 5 levels
(``levels=5``, not in the crate, L5-09) entry ``r`` of the PML5 points back at the PML5 and the
addresses have five indices: the PML5 at (r, r, r, r, r), the level-4 table of a page at
(r, r, r, r, p5), ..., its level-1 table at (r, p5, p4, p3, p2). Like the crate,
this mapper never follows a table's physical address: it computes those virtual addresses and
resolves them with a software walk of the active tables (``cr3``), as the MMU would. So every
quirk of the crate comes out the same way: a parent that is not present makes the access fault
(`SoftPageFault`), and a huge parent leads into the huge page's own memory (R-04, R-10).
"""

from __future__ import annotations

from kvmpage.addr import AnyVirtAddr, VirtAddr, _VirtAddrBase, canonicalize
from kvmpage.index import PageTableIndex
from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.paging.mapper.base import TableMapper
from kvmpage.paging.mapper.checks import cr3_arg, index_arg, memory_arg, tlb_arg
from kvmpage.paging.mapper.depth import Depth, depth_arg
from kvmpage.paging.mapper.entries import ADDRESS_MASK, HUGE_PAGE, PRESENT, Table
from kvmpage.paging.mapper.errors import (
    NotActive,
    NotRecursive,
)
from kvmpage.paging.mapper.fast import FastMapper
from kvmpage.paging.mapper.flush import Tlb
from kvmpage.paging.mapper.rules import RECURSIVE_RULES
from kvmpage.paging.page import PhysFrame, Size4KiB
from kvmpage.paging.walk import SoftPageFault, resolve_below
from kvmpage.x86 import U64_MASK


def recursive_table_address(r: int, *indices: int, levels: int = 4) -> VirtAddr:
    """The virtual address (r, ..., indices) padded on the left with ``r`` to ``levels``
    indices: a `VirtAddr` at 4 levels, a `VirtAddr57` at 5 (L5-09).

    ``r`` and up to ``levels - 1`` ``indices``, each an int in 0..511 (`TypeError` /
    `ValueError` otherwise: 512 or -1 used to give a wrong address silently)."""
    depth = depth_arg(levels)
    if len(indices) > levels - 1:
        raise TypeError(
            f"recursive_table_address takes r and {levels - 1} indices at most, not {indices}"
        )
    r = index_arg(r, "r")
    indices = tuple(index_arg(i, f"index {n}") for n, i in enumerate(indices, 1))
    v = 0
    for i in (r,) * (levels - len(indices)) + indices:
        v = (v << 9) | i
    return depth.addr_type._raw(canonicalize(v << 12, levels))  # type: ignore[return-value]


class RecursivePageTable(FastMapper):
    """Mapper over a recursively mapped PML4 whose active copy is the CR3 frame ``cr3``.

    ``RecursivePageTable(memory, table_addr, cr3)`` is the crate's ``new``: ``table_addr`` is the
    virtual address of the PML4 and must be (r, r, r, r, offset 0) (else `NotRecursive`); entry
    ``r`` of the table found there must point at ``cr3`` (else `NotActive`). The crate reads CR3
    itself; here you pass the value the CPU would hold. Where the crate would hold a reference
    that cannot exist (``table_addr`` does not resolve under ``cr3``, or resolves outside the
    memory), the result is `NotActive` too.

    With ``levels=5`` the CR3 frame holds a PML5 and ``table_addr`` is (r, r, r, r, r), a
    `VirtAddr57` (or a `VirtAddr`, widened; L5-09).
    """

    RULES = RECURSIVE_RULES

    def __init__(
        self,
        memory: PhysMemory,
        table_addr: AnyVirtAddr,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
        levels: int = 4,
    ) -> None:
        memory_arg(memory)
        depth = depth_arg(levels)
        va = depth.check_addr(table_addr, "table_addr")
        cr3_arg(cr3)
        tlb_arg(tlb)
        r = (va >> depth.top_shift) & 511
        if not (
            all((va >> (3 + 9 * level)) & 511 == r for level in depth.walk)
            and va & 0xFFF == 0  # a table reference is always page aligned
        ):
            raise NotRecursive()
        # The table the crate would dereference is whatever the MMU finds at table_addr. If the
        # walk faults or leaves the memory, no table at table_addr can hold a recursive entry
        # pointing at CR3 (e.g. entry r holds the table's virtual address, issue #209).
        try:
            table_phys = resolve_below(memory, cr3._start, va, levels)
            raw = memory.read_u64(table_phys + 8 * r)
        except (SoftPageFault, PhysMemoryError) as fault:
            raise NotActive(f"{table_addr!r} does not resolve under CR3: {fault}") from None
        if not raw & PRESENT or raw & HUGE_PAGE or raw & ADDRESS_MASK != cr3._start:
            raise NotActive(f"entry {r} is {raw:#x}, CR3 frame is {cr3._start:#x}")
        self._init(memory, r, cr3, tlb, depth)

    @classmethod
    def new(
        cls,
        memory: PhysMemory,
        table_addr: AnyVirtAddr,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
        levels: int = 4,
    ) -> RecursivePageTable:
        """Same as the constructor (the crate's name)."""
        return cls(memory, table_addr, cr3, tlb=tlb, levels=levels)

    @classmethod
    def new_unchecked(
        cls,
        memory: PhysMemory,
        recursive_index: int,
        cr3: PhysFrame[Size4KiB],
        *,
        tlb: Tlb | None = None,
        levels: int = 4,
    ) -> RecursivePageTable:
        """No checks of the tables (R-02): the caller promises entry ``recursive_index`` is the
        recursive one. The arguments' types are checked all the same."""
        memory_arg(memory)
        cr3_arg(cr3)
        tlb_arg(tlb)
        depth = depth_arg(levels)
        if isinstance(recursive_index, bool):
            raise TypeError("recursive_index must be an int or a PageTableIndex, got a bool")
        self = object.__new__(cls)
        self._init(memory, int(PageTableIndex(recursive_index)), cr3, tlb, depth)
        return self

    memory: PhysMemory

    def _init(
        self, memory: PhysMemory, r: int, cr3: PhysFrame[Size4KiB], tlb: Tlb | None, depth: Depth
    ) -> None:
        if not isinstance(memory, PhysMemory):
            raise TypeError(
                "a RecursivePageTable needs its tables in a flat PhysMemory, got "
                f"{type(memory).__name__} (use a MappedPageTable over a memory image)"
            )
        TableMapper.__init__(self, memory, tlb, depth)
        self.recursive_index = r
        self.cr3 = cr3
        # (r, r, ..., r) prefixes of the recursive addresses, by the level of the table reached
        self._r_prefix = {
            level: sum(r << (9 * k) for k in range(level)) for level in range(1, depth.levels + 1)
        }
        # The inlined map_to and translate_addr (`FastMapper`) run while entry r points back
        # at the top-level table (present, PS clear; never when that table is not inside
        # memory): its word and its value then.
        top, words = cr3._start, memory.words
        self._self_word = (top >> 3) + r if top + 4096 <= memory.size else 0
        self._self_entry = top | PRESENT if top + 4096 <= memory.size else -1
        self._set_fast_paths(
            words, top >> 3, (memory.size >> 3) - 511, (self._self_word, _SELF_MASK,
            self._self_entry), stop=U64_MASK, leaf_bad=HUGE_PAGE,
        )  # fmt: skip

    def table_address(self) -> _VirtAddrBase:
        """The virtual address of the top-level table: (r, r, r, r), or (r, r, r, r, r) as a
        `VirtAddr57` at 5 levels."""
        return recursive_table_address(self.recursive_index, levels=self.levels)

    def _words_at(self, va: int) -> Table:
        """The table at the (recursive) virtual address ``va``, found as the MMU would."""
        memory, top = self.memory, self.cr3._start
        r = self.recursive_index
        level = self.levels
        if self._self_mapped():
            # entry r leads back to this table at every level: skip the leading r indices
            while level and (va >> (3 + 9 * level)) & 511 == r:
                level -= 1
        phys = top | (va & 0xFFF) if level == 0 else resolve_below(memory, top, va, level)
        if phys + 4096 > self.memory.size:
            self.memory.check(phys, 4096)
        return (self.memory.words, phys >> 3)

    def _top(self) -> Table:
        return self._words_at(canonicalize(self._r_prefix[self.levels] << 12, self.levels))

    def _table_va(self, va: int, level: int) -> int:
        """The recursive address of the table of ``level`` on the walk of ``va``."""
        # (r x level, then va's top indices)
        used = 9 * (self.levels - level)
        indices = (va >> (12 + 9 * level)) & ((1 << used) - 1)
        return canonicalize(((self._r_prefix[level] << used) | indices) << 12, self.levels)

    def _child(self, raw: int, va: int, child_level: int) -> Table:
        return self._words_at(self._table_va(va, child_level))

    def _prepare_range_walk(self) -> None:
        self._top()  # where map_to faults first, if it does
        if not self._self_mapped():
            raise ValueError(
                f"map_range needs entry {self.recursive_index} of the level-{self.levels} table "
                f"at {self.cr3._start:#x} to point back at it"
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
        return level == self.levels and index == self.recursive_index  # C-11

    # -- fast paths -----------------------------------------------------------------------
    # When entry r of the active top-level table points back at it (present, PS clear), every
    # recursive address resolves level by level through the tables themselves: the level-3
    # table of a page at (r, r, r, p4) is the frame of PML4[p4], and so on down (one level
    # more below a PML5). The inlined map_to and translate_addr (`FastMapper`) rely on that,
    # guarded by `_self_word` / `_self_entry`, and hand over to the shared engine as soon as
    # anything is unusual (a missing or huge parent on the recursive path, memory bounds).

    def _self_mapped(self) -> bool:
        """Whether entry r of the top-level table points back at it (present, PS clear)."""
        return self.memory.words[self._self_word] & _SELF_MASK == self._self_entry


#: The bits of entry r compared with ``_self_entry``: its address, PRESENT and PS.
_SELF_MASK = ADDRESS_MASK | PRESENT | HUGE_PAGE
