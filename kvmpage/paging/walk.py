"""A software walk of the active tables, the way the CPU resolves a virtual address.

Used where the crate relies on the MMU itself: `RecursivePageTable` reaches every table through
its recursive virtual address, and this walk is what turns that address into a physical one.
Only presence, page size and the reserved bits that page size implies are modelled here (PS in
a level-4 entry, bits 13..20 of a 2 MiB and 13..29 of a 1 GiB leaf, which is also what a
misaligned huge-page address sets); the full permission model is ``kvmpage.paging.access``.
"""

from __future__ import annotations

from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.panic import Panic

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
_PRESENT = 1
_PS = 1 << 7


class SoftPageFault(Panic):
    """The software walk of ``addr`` faulted at ``level``: on hardware this access is a #PF.

    A subclass of `Panic`: the crate would not return an error here, the kernel would fault.
    """

    def __init__(self, addr: int, level: int, reason: str) -> None:
        super().__init__(f"page fault at {addr:#x}: level-{level} entry {reason}")
        self.addr = addr
        self.level = level
        self.reason = reason


def resolve(memory: PhysMemory, p4_phys: int, addr: int) -> int:
    """The physical address the CPU would reach for virtual ``addr`` with CR3 at ``p4_phys``.

    Raises `SoftPageFault` when an entry on the way is not present (or a level-4 entry has PS
    set), and `PhysMemoryError` when an entry points outside ``memory``.
    """
    q = memory._q
    limit = memory.size - 4096
    if not 0 <= p4_phys <= limit:
        _outside(memory, 4, p4_phys, addr)
    raw = q[(p4_phys >> 3) + ((addr >> 39) & 511)]
    if raw & 0x81 != _PRESENT:  # not present, or PS (reserved) in a level-4 entry
        raise SoftPageFault(addr, 4, "is not present" if not raw & 1 else "has PS set (reserved)")
    return resolve_below(memory, raw & ADDRESS_MASK, addr, 3)


def _outside(memory: PhysMemory, level: int, table: int, addr: int) -> None:
    raise PhysMemoryError(
        f"level-{level} table at {table:#x} (walking {addr:#x}) is outside memory "
        f"[0, {memory.size:#x})"
    )


def resolve_below(memory: PhysMemory, table: int, addr: int, level: int) -> int:
    """Continue a walk of ``addr`` at ``level`` (3, 2 or 1) in the table at ``table``.

    The same rules as `resolve`; used when the upper levels are already known (the leading
    recursive indices of a recursive address all lead back to the level-4 table).
    """
    q = memory._q
    limit = memory.size - 4096
    while True:
        if not 0 <= table <= limit:
            _outside(memory, level, table, addr)
        raw = q[(table >> 3) + ((addr >> (3 + 9 * level)) & 511)]
        if not raw & _PRESENT:
            raise SoftPageFault(addr, level, "is not present")
        if level == 1:
            return (raw & ADDRESS_MASK) | (addr & 0xFFF)
        if raw & _PS:
            if level == 3:
                if raw & 0x3FFF_E000:
                    raise SoftPageFault(addr, 3, "maps a 1 GiB page with reserved bits 13..29 set")
                return (raw & 0x000F_FFFF_C000_0000) | (addr & 0x3FFF_FFFF)
            if raw & 0x1F_E000:
                raise SoftPageFault(addr, 2, "maps a 2 MiB page with reserved bits 13..20 set")
            return (raw & 0x000F_FFFF_FFE0_0000) | (addr & 0x1F_FFFF)
        table = raw & ADDRESS_MASK
        level -= 1
