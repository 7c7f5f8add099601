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


class Step(NamedTuple):
    """One level of a walk: which entry was read and what it held.

    A named tuple (immutable, like the `Walk` that holds it): a walk makes one per level, and a
    tuple is made several times faster than a frozen dataclass.
    """

    level: int
    index: int  # type: ignore[assignment]  # (shadows tuple.index, which a step never needs)
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


class _Rules(NamedTuple):
    """What `walk` checks under one CPU state and feature set, worked out once."""

    levels: int
    #: an address is canonical when ``va >> top_shift`` is 0 or ``top_ones``
    top_shift: int
    top_ones: int
    #: per level, top first: the level, the shift of its index in an address, and the
    #: reserved bits of an entry there without PS and with PS
    per_level: tuple[tuple[int, int, int, int], ...]


def _rules_for(cpu: CpuState, features: Features) -> _Rules:
    levels = cpu.levels
    per_level = tuple(
        (level, 3 + 9 * level, reserved_mask(level, 0, cpu, features),
         reserved_mask(level, PS, cpu, features))
        for level in range(levels, 0, -1)
    )  # fmt: skip
    return _Rules(levels, 9 * levels + 11, (1 << (53 - 9 * levels)) - 1, per_level)


_DEFAULT_RULES = _rules_for(_DEFAULT_CPU, _DEFAULT_FEATURES)
#: rules by what they depend on (callers often make a new CpuState per call: an image's
#: context does); a tuple of four values hashes faster than the frozen dataclasses
_RULES: dict[tuple[int, bool, int, bool], _Rules] = {}
_new = tuple.__new__  # a named tuple without its Python-level __new__


def _rules(cpu: CpuState, features: Features) -> _Rules:
    if cpu is _DEFAULT_CPU and features is _DEFAULT_FEATURES:
        return _DEFAULT_RULES
    key = (cpu.levels, cpu.nxe, features.maxphyaddr, features.gbpages)
    rules = _RULES.get(key)
    if rules is None:
        if len(_RULES) >= 256:
            _RULES.clear()
        rules = _RULES[key] = _rules_for(cpu, features)
    return rules


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
    rules = _rules(cpu, features)
    top = va >> rules.top_shift
    if not (top == 0 or top == rules.top_ones) or va < 0:
        bits = 48 if rules.levels == 4 else 57
        return Walk(va, (), None, None, NOT_CANONICAL,
                    f"{va:#x} is not canonical (bits 63..{bits - 1} must all be equal): an "
                    "access raises #GP, no walk")  # fmt: skip
    q = memory.flat_words
    if q is not None:
        try:
            return _walk_flat(q, root, va, rules)
        except (IndexError, ValueError):
            pass  # a table outside memory, or memory closed: the general walk says which
    return _walk_general(memory, root, va, rules)


def _walk_flat(q: memoryview, root: int, va: int, rules: _Rules) -> Walk:
    """`walk` of canonical ``va`` over a flat memory's words (`PhysicalMemory.flat_words`).

    Raises `IndexError` for a table outside memory (``ValueError`` once it is closed), where
    `_walk_general` finds out which and says so.
    """
    steps: list[Step] = []
    append = steps.append
    table = root & ADDRESS_MASK
    for level, shift, plain, huge in rules.per_level:
        index = (va >> shift) & 511
        raw: int = q[(table >> 3) | index]
        append(_new(Step, (level, index, table | index << 3, raw)))
        if not raw & 1:
            return _new(Walk, (va, tuple(steps), None, None, NOT_PRESENT,
                               f"level-{level} entry not present"))  # fmt: skip
        if raw & PS:
            bad = raw & huge
            if bad:
                return _reserved(va, steps, level, bad)
            if level <= 3:
                span = PAGE_SIZE_OF_LEVEL[level]
                phys = (raw & ADDRESS_MASK & -span) | (va & (span - 1))
                return _new(Walk, (va, tuple(steps), phys, span, None, ""))
        elif raw & plain:
            return _reserved(va, steps, level, raw & plain)
        if level == 1:
            return _new(Walk, (va, tuple(steps), (raw & ADDRESS_MASK) | (va & 0xFFF), 4096,
                               None, ""))  # fmt: skip
        table = raw & ADDRESS_MASK
    raise AssertionError("unreachable: level 1 always ends the walk")


def _reserved(va: int, steps: list[Step], level: int, bad: int) -> Walk:
    return Walk(va, tuple(steps), None, None, RESERVED,
                f"level-{level} entry has reserved bits {bad:#x} set")  # fmt: skip


def _walk_general(memory: PhysicalMemory, root: int, va: int, rules: _Rules) -> Walk:
    """`walk` of canonical ``va`` through `PhysicalMemory.frame_words`, any memory."""
    steps: list[Step] = []
    table = root & ADDRESS_MASK
    frame_words = memory.frame_words
    for level, shift, plain, huge in rules.per_level:
        try:
            q, base = frame_words(table)
        except PhysMemoryError as e:
            return Walk(va, tuple(steps), None, None, ABSENT,
                        f"the level-{level} table at {table:#x} is not in memory: {e}")  # fmt: skip
        index = (va >> shift) & 511
        raw = int(q[base + index])
        steps.append(_new(Step, (level, index, table + 8 * index, raw)))
        if not raw & 1:
            return _new(Walk, (va, tuple(steps), None, None, NOT_PRESENT,
                               f"level-{level} entry not present"))  # fmt: skip
        bad = raw & (huge if raw & PS else plain)
        if bad:
            return _reserved(va, steps, level, bad)
        if level == 1 or (raw & PS and level <= 3):
            span = PAGE_SIZE_OF_LEVEL[level]
            phys = leaf_frame(raw, level) | (va & (span - 1))
            return _new(Walk, (va, tuple(steps), phys, span, None, ""))
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


_TABLE_WORDS = ADDRESS_MASK >> 3  # an entry's table address as a word index: (raw >> 3) & this
_NOT_TABLE = ~ADDRESS_MASK  # bits that no table address has


def resolve(memory: PhysicalMemory, p4_phys: int, addr: int) -> int:
    """The physical address the CPU reaches for canonical ``addr`` under the 4-level tables at
    ``p4_phys`` (default CPU state and features): `walk`'s rules, inlined for a flat memory.

    Raises `SoftPageFault` when the walk faults (an entry not present or with reserved bits),
    and `PhysMemoryError` when a table is outside ``memory``.

    The hot path: the four reads unrolled over `PhysicalMemory.flat_words`, a table outside
    memory (the root too) caught as the `IndexError` of its read. Anything else (another
    memory, such an `IndexError`, a root that is no table address) is `resolve_below`, which
    says exactly what.
    """
    q = memory.flat_words
    if q is None or p4_phys & _NOT_TABLE:  # (negative, unaligned or past 52 bits)
        return resolve_below(memory, p4_phys, addr, 4)
    try:
        raw: int = q[(p4_phys >> 3) | ((addr >> 39) & 511)]
        if raw & 0x81 != 1:  # not present, or PS (reserved in a PML4E)
            return _stop(raw, addr, 4)
        raw = q[((raw >> 3) & _TABLE_WORDS) | ((addr >> 30) & 511)]
        if raw & 0x81 != 1:  # not present, or a 1 GiB page
            return _stop(raw, addr, 3)
        raw = q[((raw >> 3) & _TABLE_WORDS) | ((addr >> 21) & 511)]
        if raw & 0x81 != 1:  # not present, or a 2 MiB page
            return _stop(raw, addr, 2)
        raw = q[((raw >> 3) & _TABLE_WORDS) | ((addr >> 12) & 511)]
    except IndexError:
        return resolve_below(memory, p4_phys, addr, 4)
    if raw & 1:
        return (raw & ADDRESS_MASK) | (addr & 0xFFF)
    raise SoftPageFault(addr, 1, "is not present")


def _stop(raw: int, addr: int, level: int) -> int:
    """Where a walk ends at an entry above level 1 that is not present or has PS set (default
    rules): the address in the huge page, or the fault."""
    if not raw & 1:
        raise SoftPageFault(addr, level, "is not present")
    if level == 3:
        if raw & 0x3FFF_E000:
            raise SoftPageFault(addr, 3, f"has reserved bits {raw & 0x3FFF_E000:#x} set")
        return leaf_frame(raw, 3) | (addr & 0x3FFF_FFFF)
    if level == 2:
        if raw & 0x1F_E000:
            raise SoftPageFault(addr, 2, f"has reserved bits {raw & 0x1F_E000:#x} set")
        return leaf_frame(raw, 2) | (addr & 0x1F_FFFF)
    raise SoftPageFault(addr, level, "has reserved bits 0x80 set")


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
        if level == 1:
            if raw & 1:
                return (raw & ADDRESS_MASK) | (addr & 0xFFF)
            raise SoftPageFault(addr, 1, "is not present")
        if raw & 0x81 != 1:
            return _stop(raw, addr, level)
        table = raw & ADDRESS_MASK
        level -= 1


def _resolve_general(memory: PhysicalMemory, table: int, addr: int, level: int) -> int:
    """`resolve_below` through `PhysicalMemory.frame_words` (memories other than a flat one
    without holes)."""
    for lvl in range(level, 1, -1):
        q, base = memory.frame_words(table)
        raw = int(q[base + ((addr >> (3 + 9 * lvl)) & 511)])
        if raw & 0x81 != 1:
            return _stop(raw, addr, lvl)
        table = raw & ADDRESS_MASK
    q, base = memory.frame_words(table)
    raw = int(q[base + ((addr >> 12) & 511)])
    if raw & 1:
        return (raw & ADDRESS_MASK) | (addr & 0xFFF)
    raise SoftPageFault(addr, 1, "is not present")
