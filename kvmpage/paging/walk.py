"""The software walk: what the CPU does with one virtual address under a set of tables.

This is kvmpage's only model of the hardware walk; everything that asks "where does this address
go, and why not" uses it: the permission model (`kvmpage.paging.access` decides an access from
the entries `walk` read), the bulk enumeration of every mapping (`kvmpage.paging.leaves`, the
same rules a table at a time), the CLI's ``walk``, the verifier's predictions, memory images,
and `RecursivePageTable`, whose tables are found through the MMU (`resolve`, the fast path).

The rules, level by level from the top (PML5 with CR4.LA57, else PML4): the address must be
canonical (else #GP, no walk); the table must be in memory (an image may not hold it); the entry
must be present; it must have no reserved bit set (`kvmpage.paging.arch.reserved_mask`: address
bits at or above MAXPHYADDR, NX without EFER.NXE, PS at levels 4 and 5, PS at level 3 without
1 GiB pages, bits 13..20 of a 2 MiB and 13..29 of a 1 GiB leaf); then a level-1 entry, or PS at
level 2 or 3, is the leaf. Rights combine over the walk: writable and user only if every entry
allows it, executable unless an entry sets NX (with EFER.NXE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kvmpage.memory import PhysicalMemory, PhysMemory, PhysMemoryError
from kvmpage.paging.arch import (
    ADDRESS_MASK,
    PAGE_SIZE_OF_LEVEL,
    PS,
    CpuState,
    Features,
    is_canonical,
    leaf_frame,
    reserved_mask,
)
from kvmpage.panic import Panic

#: Why a walk ended without a translation (`Walk.stop`).
NOT_CANONICAL = "not-canonical"
NOT_PRESENT = "not-present"
RESERVED = "reserved"
ABSENT = "absent"

_DEFAULT_CPU = CpuState()
_DEFAULT_FEATURES = Features()


@dataclass(frozen=True, slots=True)
class Rights:
    """Effective access rights of a mapping, combined over every level of its walk."""

    writable: bool
    user: bool
    executable: bool

    def __str__(self) -> str:
        return (
            ("U" if self.user else "K")
            + " r"
            + ("w" if self.writable else "-")
            + ("x" if self.executable else "-")
        )


#: the eight possible `Rights`, indexed by writable | user << 1 | executable << 2
RIGHTS = tuple(Rights(bool(i & 1), bool(i & 2), bool(i & 4)) for i in range(8))


def rights_of(entries: Sequence[int], cpu: CpuState = _DEFAULT_CPU) -> Rights:
    """The rights ``entries`` (a walk's, top level first) grant together."""
    writable = user = 1
    nx = 0
    for raw in entries:
        writable &= raw >> 1
        user &= raw >> 2
        nx |= raw >> 63
    executable = not (nx and cpu.nxe)
    return RIGHTS[(writable & 1) | (user & 1) << 1 | executable << 2]


@dataclass(frozen=True, slots=True)
class Step:
    """One level of a walk: which entry was read and what it held."""

    level: int
    index: int
    entry_addr: int
    raw: int


class Walk(NamedTuple):
    """The steps of a walk and its end: the physical address, or why there is none."""

    va: int
    steps: tuple[Step, ...]
    phys: int | None
    page_size: int | None
    #: None when mapped, else `NOT_CANONICAL`, `NOT_PRESENT`, `RESERVED` or `ABSENT`
    stop: str | None
    #: a sentence for people: which level, which bits, which table
    reason: str

    @property
    def mapped(self) -> bool:
        """Whether the walk reached a leaf."""
        return self.phys is not None

    @property
    def entries(self) -> tuple[int, ...]:
        """The raw entries read, top level first (the leaf or the faulting entry last)."""
        return tuple(s.raw for s in self.steps)

    @property
    def entry_addrs(self) -> tuple[int, ...]:
        """Their physical addresses."""
        return tuple(s.entry_addr for s in self.steps)

    @property
    def level(self) -> int | None:
        """The level of the last entry read (the leaf's when mapped)."""
        return self.steps[-1].level if self.steps else None

    def rights(self, cpu: CpuState = _DEFAULT_CPU) -> Rights:
        """The combined rights of the entries read (meaningful when mapped)."""
        return rights_of(self.entries, cpu)


def walk(
    memory: PhysicalMemory,
    root: int,
    va: int,
    cpu: CpuState = _DEFAULT_CPU,
    features: Features = _DEFAULT_FEATURES,
) -> Walk:
    """Walk ``va`` from the top-level table at physical ``root`` as the CPU does (module doc).

    Never raises for what the tables hold: a table outside ``memory`` ends the walk with
    `ABSENT`, as a missing entry ends it with `NOT_PRESENT`.
    """
    levels = cpu.levels
    if not 0 <= va < 1 << 64 or not is_canonical(va, levels):
        bits = 48 if levels == 4 else 57
        return Walk(va, (), None, None, NOT_CANONICAL,
                    f"{va:#x} is not canonical (bits 63..{bits - 1} must all be equal): an "
                    "access raises #GP, no walk")  # fmt: skip
    steps: list[Step] = []
    table = root & ADDRESS_MASK
    for level in range(levels, 0, -1):
        try:
            q, base = memory.frame_words(table)
        except PhysMemoryError as e:
            return Walk(va, tuple(steps), None, None, ABSENT,
                        f"the level-{level} table at {table:#x} is not in memory: {e}")  # fmt: skip
        index = (va >> (3 + 9 * level)) & 511
        raw = int(q[base + index])
        steps.append(Step(level, index, table + 8 * index, raw))
        if not raw & 1:
            return Walk(va, tuple(steps), None, None, NOT_PRESENT,
                        f"level-{level} entry not present")  # fmt: skip
        bad = raw & reserved_mask(level, raw, cpu, features)
        if bad:
            return Walk(va, tuple(steps), None, None, RESERVED,
                        f"level-{level} entry has reserved bits {bad:#x} set")  # fmt: skip
        if level == 1 or (raw & PS and level <= 3):
            span = PAGE_SIZE_OF_LEVEL[level]
            phys = leaf_frame(raw, level) | (va & (span - 1))
            return Walk(va, tuple(steps), phys, span, None, "")
        table = raw & ADDRESS_MASK
    raise AssertionError("unreachable: level 1 always ends the walk")


# -- the fast path ----------------------------------------------------------------------------


class SoftPageFault(Panic):
    """The software walk of ``addr`` faulted at ``level``: on hardware this access is a #PF.

    A subclass of `Panic`: the crate would not return an error here, the kernel would fault.
    """

    def __init__(self, addr: int, level: int, reason: str) -> None:
        super().__init__(f"page fault at {addr:#x}: level-{level} entry {reason}")
        self.addr = addr
        self.level = level
        self.reason = reason


def resolve(memory: PhysicalMemory, p4_phys: int, addr: int) -> int:
    """The physical address the CPU reaches for canonical ``addr`` under the 4-level tables at
    ``p4_phys`` (default CPU state and features): `walk`'s rules, inlined for a flat memory.

    Raises `SoftPageFault` when the walk faults (an entry not present or with reserved bits),
    and `PhysMemoryError` when a table is outside ``memory``.
    """
    return resolve_below(memory, p4_phys, addr, 4)


def resolve_below(memory: PhysicalMemory, table: int, addr: int, level: int) -> int:
    """Continue a walk of ``addr`` at ``level`` (5..1) in the table at ``table``; `resolve`
    when the upper levels are already known (the leading recursive indices of a recursive
    address all lead back to the top-level table)."""
    if type(memory) is not PhysMemory or memory.has_holes:
        return _resolve_general(memory, table, addr, level)
    q = memory.words
    limit = memory.size - 4096
    while True:
        if not 0 <= table <= limit:
            raise PhysMemoryError(
                f"level-{level} table at {table:#x} (walking {addr:#x}) is outside memory "
                f"[0, {memory.size:#x})"
            )
        raw = q[(table >> 3) + ((addr >> (3 + 9 * level)) & 511)]
        if not raw & 1:
            raise SoftPageFault(addr, level, "is not present")
        if level == 1:
            return (raw & ADDRESS_MASK) | (addr & 0xFFF)
        if raw & PS:
            if level >= 4:  # (PS is reserved in a PML4E and a PML5E)
                raise SoftPageFault(addr, level, "has reserved bits 0x80 set")
            if level == 3:
                if raw & 0x3FFF_E000:
                    raise SoftPageFault(addr, 3, f"has reserved bits {raw & 0x3FFF_E000:#x} set")
                return (raw & 0x000F_FFFF_C000_0000) | (addr & 0x3FFF_FFFF)
            if raw & 0x1F_E000:
                raise SoftPageFault(addr, 2, f"has reserved bits {raw & 0x1F_E000:#x} set")
            return (raw & 0x000F_FFFF_FFE0_0000) | (addr & 0x1F_FFFF)
        table = raw & ADDRESS_MASK
        level -= 1


def _resolve_general(memory: PhysicalMemory, table: int, addr: int, level: int) -> int:
    """`resolve_below` through `walk` (memories other than a flat one without holes)."""
    for lvl in range(level, 0, -1):
        q, base = memory.frame_words(table)
        raw = int(q[base + ((addr >> (3 + 9 * lvl)) & 511)])
        if not raw & 1:
            raise SoftPageFault(addr, lvl, "is not present")
        bad = raw & reserved_mask(lvl, raw, _DEFAULT_CPU, _DEFAULT_FEATURES)
        if bad:
            raise SoftPageFault(addr, lvl, f"has reserved bits {bad:#x} set")
        if lvl == 1 or raw & PS:
            span = PAGE_SIZE_OF_LEVEL[lvl]
            return leaf_frame(raw, lvl) | (addr & (span - 1))
        table = raw & ADDRESS_MASK
    raise AssertionError("unreachable")
