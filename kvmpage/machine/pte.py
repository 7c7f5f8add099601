"""Raw x86-64 page-table entries, written as plain u64 values into a `PhysMemory`.

This is the machine's only knowledge of entry encoding (the agent's own tables and the tests'
throw-away layouts). When `kvmpage.paging` is available, user layouts should be built with it;
this module stays small on purpose so it can be swapped for it.
"""

from __future__ import annotations

from typing import ClassVar

from kvmpage.addr import canonicalize
from kvmpage.memory import PhysMemory
from kvmpage.x86 import ADDRESS_MASK, NX, PCD, PS, PWT, A, D, G, P, U, W

#: The entry bits are the architecture's (`kvmpage.x86`), named here for the machine's code.
__all__ = [
    "ADDRESS_MASK", "NX", "PCD", "PS", "PWT", "SIZE_1G", "SIZE_2M", "SIZE_4K", "A", "D", "G",
    "P", "U", "W", "FrameBump", "SimpleSpace", "canonical", "entry", "get_entry", "indices",
    "set_entry",
]  # fmt: skip

SIZE_4K = 1 << 12
SIZE_2M = 1 << 21
SIZE_1G = 1 << 30


def entry(phys: int, flags: int) -> int:
    """An entry pointing at ``phys`` (which must be 4 KiB aligned) with ``flags``."""
    if phys & ~ADDRESS_MASK:
        raise ValueError(f"physical address {phys:#x} is not a 4 KiB aligned 52-bit address")
    return phys | flags


def indices(va: int) -> tuple[int, int, int, int]:
    """The (P4, P3, P2, P1) table indices of a virtual address."""
    return (va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511


def canonical(va: int) -> int:
    """Sign-extend bit 47 (4-level paging): `kvmpage.addr.canonicalize`."""
    return canonicalize(va)


def set_entry(memory: PhysMemory, table: int, index: int, value: int) -> None:
    """Write entry ``index`` of the table in the frame at physical address ``table``."""
    if not 0 <= index < 512:
        raise ValueError(f"table index {index} out of range")
    memory.write_u64(table + 8 * index, value)


def get_entry(memory: PhysMemory, table: int, index: int) -> int:
    """Read entry ``index`` of the table at physical address ``table``."""
    return memory.read_u64(table + 8 * index)


class FrameBump:
    """Hands out zeroed 4 KiB frames from ``[start, end)``, bottom up (tests and probes only)."""

    def __init__(self, memory: PhysMemory, start: int, end: int) -> None:
        self.memory = memory
        self.next = -(-start // SIZE_4K) * SIZE_4K
        self.end = end

    def alloc(self, size: int = SIZE_4K) -> int:
        """A zeroed frame of ``size`` bytes, aligned to its size."""
        frame = -(-self.next // size) * size
        if frame + size > self.end:
            raise MemoryError(f"no {size:#x}-byte frame left below {self.end:#x}")
        self.next = frame + size
        self.memory.zero(frame, size)
        return frame


class SimpleSpace:
    """A minimal 4-level address space writer: enough for the machine's own probes and tests.

    Upper-level entries are created with ``table_flags`` (default P|W|U, so leaf flags decide).
    """

    LEVEL_SIZES: ClassVar[dict[int, int]] = {1: SIZE_4K, 2: SIZE_2M, 3: SIZE_1G}

    def __init__(self, memory: PhysMemory, frames: FrameBump) -> None:
        self.memory = memory
        self.frames = frames
        self.p4 = frames.alloc()

    def entry_address(self, va: int, level: int, *, create: bool = False,
                      table_flags: int = P | W | U) -> int:  # fmt: skip
        """Physical address of the entry mapping ``va`` at ``level`` (4 = PML4 ... 1 = PT)."""
        table = self.p4
        idx = indices(va)
        for lvl in range(4, level, -1):
            at = table + 8 * idx[4 - lvl]
            current = self.memory.read_u64(at)
            if not current & P:
                if not create:
                    raise KeyError(f"{va:#x} has no level-{lvl - 1} table")
                current = entry(self.frames.alloc(), table_flags)
                self.memory.write_u64(at, current)
            elif current & PS:
                raise ValueError(f"{va:#x} is inside a huge page at level {lvl}")
            table = current & ADDRESS_MASK
        return table + 8 * idx[4 - level]

    def map(self, va: int, phys: int, flags: int, *, level: int = 1,
            table_flags: int = P | W | U) -> int:  # fmt: skip
        """Map ``va`` to ``phys`` with a leaf at ``level`` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB).

        ``flags`` are the leaf flags (P is not implied, PS is added for huge leaves). Returns the
        physical address of the leaf entry.
        """
        size = self.LEVEL_SIZES[level]
        if va % size or phys % size:
            raise ValueError(f"{va:#x} -> {phys:#x} is not aligned to {size:#x}")
        at = self.entry_address(va, level, create=True, table_flags=table_flags)
        self.memory.write_u64(at, phys | flags | (PS if level > 1 else 0))
        return at
