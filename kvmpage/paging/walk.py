"""A software walk of the active tables, the way the CPU resolves a virtual address.

Used where the crate relies on the MMU itself: `RecursivePageTable` reaches every table through
its recursive virtual address, and this walk is what turns that address into a physical one.
Only presence and page size are modelled here (the permission model lives in
``kvmpage.paging.access``); a level-4 entry with PS set is a reserved-bit fault, as on hardware.
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
    limit = memory.size
    table = p4_phys
    for level in (4, 3, 2, 1):
        if table + 4096 > limit:
            raise PhysMemoryError(
                f"level-{level} table at {table:#x} (walking {addr:#x}) is outside memory "
                f"[0, {limit:#x})"
            )
        raw = q[(table >> 3) + ((addr >> (3 + 9 * level)) & 511)]
        if not raw & _PRESENT:
            raise SoftPageFault(addr, level, "is not present")
        if raw & _PS and level > 1:
            if level == 4:
                raise SoftPageFault(addr, level, "has the reserved PS bit set")
            span = 1 << (12 + 9 * (level - 1))
            return (raw & ADDRESS_MASK & ~(span - 1)) | (addr & (span - 1))
        table = raw & ADDRESS_MASK
    return table | (addr & 0xFFF)
