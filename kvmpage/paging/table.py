"""Page-table flags, entries and tables (checklist rules T-01..T-14).

A `PageTable` is a live view of one 4 KiB frame of a `PhysMemory`: reading an entry reads the
memory, writing one writes the memory, byte for byte as the CPU will see it. A `PageTableEntry`
obtained from a table is a live view of its 8 bytes; ``PageTableEntry()`` alone is a detached
entry with its own storage.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterator
from typing import Any

from kvmpage.addr import PhysAddr
from kvmpage.index import ENTRY_COUNT, PageTableIndex
from kvmpage.memory import PhysicalMemory, PhysMemoryError
from kvmpage.paging.page import PhysFrame, Size4KiB
from kvmpage.panic import Panic
from kvmpage.x86 import ADDRESS_MASK as ADDRESS_MASK  # (T-05; the mapper imports it from here)


def int_arg(value: Any, name: str) -> int:
    """``value`` as an int: an int, `PageTableFlags` or `PhysAddr` (anything with
    ``__index__``), not a bool, a float or a string (`TypeError`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def u64_arg(value: Any, name: str) -> int:
    """`int_arg`, in u64 (`ValueError` for a negative value or 2**64 and above). Raw entries
    and flags go through here before anything is written."""
    v = int_arg(value, name)
    if not 0 <= v < 1 << 64:
        raise ValueError(f"{name} {v:#x} does not fit in 64 bits")
    return v


class PageTableFlags(enum.IntFlag, boundary=enum.KEEP):
    """The 24 named bits of a page-table entry (T-01); bits 12..51 are the address field.

    An `int` subclass: ``|``, ``&``, ``^`` work and unnamed bits are kept (``from_bits_retain``).
    ``~`` is bitflags' ``!``: the complement within the 24 named bits, so it never sets a bit of
    the address field (to clear a flag in a raw entry value, use ``raw & ~int(x)``). Values are
    immutable, so the crate's ``insert`` / ``remove`` are ``f | x`` and ``f & ~x``.
    """

    PRESENT = 1 << 0
    WRITABLE = 1 << 1
    USER_ACCESSIBLE = 1 << 2
    WRITE_THROUGH = 1 << 3
    NO_CACHE = 1 << 4
    ACCESSED = 1 << 5
    DIRTY = 1 << 6
    HUGE_PAGE = 1 << 7
    GLOBAL = 1 << 8
    BIT_9 = 1 << 9
    BIT_10 = 1 << 10
    BIT_11 = 1 << 11
    BIT_52 = 1 << 52
    BIT_53 = 1 << 53
    BIT_54 = 1 << 54
    BIT_55 = 1 << 55
    BIT_56 = 1 << 56
    BIT_57 = 1 << 57
    BIT_58 = 1 << 58
    BIT_59 = 1 << 59
    BIT_60 = 1 << 60
    BIT_61 = 1 << 61
    BIT_62 = 1 << 62
    NO_EXECUTE = 1 << 63

    @classmethod
    def empty(cls) -> PageTableFlags:
        """No bit set."""
        return cls(0)

    @classmethod
    def all(cls) -> PageTableFlags:
        """All 24 named bits: ``0xfff0_0000_0000_0fff``."""
        return cls(ALL_FLAG_BITS)

    @classmethod
    def from_bits(cls, bits: int) -> PageTableFlags | None:
        """The flags for ``bits``, or None if any unnamed bit is set."""
        return cls(bits) if bits & ~ALL_FLAG_BITS == 0 else None

    @classmethod
    def from_bits_truncate(cls, bits: int) -> PageTableFlags:
        """The named bits of ``bits``; the others are dropped."""
        return cls(bits & ALL_FLAG_BITS)

    @classmethod
    def from_bits_retain(cls, bits: int) -> PageTableFlags:
        """Every bit of ``bits`` kept, named or not (as an entry's ``flags()`` does)."""
        return cls(bits)

    @classmethod
    def from_names(cls, names: str) -> PageTableFlags:
        """Parse ``"PRESENT | WRITABLE"`` (``|``, ``,`` or blanks); ValueError on unknown names."""
        value = 0
        for name in names.replace(",", "|").replace(" ", "|").split("|"):
            if not name:
                continue
            try:
                value |= cls[name.strip().upper()]
            except KeyError:
                known = ", ".join(m.name or "" for m in cls)
                raise ValueError(f"unknown page-table flag {name!r} (known: {known})") from None
        return cls(value)

    def bits(self) -> int:
        """The raw value."""
        return int(self)

    def contains(self, other: int) -> bool:
        """Whether every bit of ``other`` is set here."""
        return int(self) & int(other) == int(other)

    def intersects(self, other: int) -> bool:
        """Whether any bit of ``other`` is set here."""
        return int(self) & int(other) != 0

    def is_empty(self) -> bool:
        """Whether no bit is set."""
        return int(self) == 0

    def complement(self) -> PageTableFlags:
        """The named bits that are not set here (bitflags' ``!``)."""
        return PageTableFlags(~int(self) & ALL_FLAG_BITS)

    def __invert__(self) -> PageTableFlags:
        return self.complement()

    def names(self) -> list[str]:
        """Names of the set named bits, lowest first; unnamed bits as ``0x...``."""
        v = int(self)
        out = [m.name for m in PageTableFlags if m.name and v & m.value]
        rest = v & ~ALL_FLAG_BITS
        if rest:
            out.append(f"{rest:#x}")
        return out

    def __repr__(self) -> str:
        # bitflags 2 prints an empty set as ``0x0`` (T-03)
        return f"PageTableFlags({' | '.join(self.names()) or '0x0'})"

    __str__ = __repr__


ALL_FLAG_BITS = 0xFFF0_0000_0000_0FFF

PRESENT = int(PageTableFlags.PRESENT)
WRITABLE = int(PageTableFlags.WRITABLE)
USER_ACCESSIBLE = int(PageTableFlags.USER_ACCESSIBLE)
HUGE_PAGE = int(PageTableFlags.HUGE_PAGE)
NO_EXECUTE = int(PageTableFlags.NO_EXECUTE)


# -- entries ------------------------------------------------------------------------------


class FrameError(Exception):
    """Why `PageTableEntry.frame` has no 4 KiB frame to give (T-06)."""


class FrameNotPresent(FrameError):
    """The entry's PRESENT bit is clear."""

    def __str__(self) -> str:
        return "FrameNotPresent: the entry is not present"


class HugeFrame(FrameError):
    """The entry has HUGE_PAGE set: it maps a 2 MiB / 1 GiB frame, not a table or 4 KiB frame."""

    def __str__(self) -> str:
        return "HugeFrame: the entry maps a huge page"


class PageTableEntry:
    """One 64-bit page-table entry (T-04..T-10).

    ``PageTableEntry()`` is a detached zero entry; ``table[i]`` is a live view of slot ``i``.
    """

    __slots__ = ("_i", "_q")

    def __init__(self, raw: int = 0) -> None:
        value = u64_arg(raw, "raw")
        self._q = memoryview(bytearray(8)).cast("Q")
        self._i = 0
        self._q[0] = value

    @classmethod
    def _view(cls, words: memoryview, index: int) -> PageTableEntry:
        e = object.__new__(cls)
        e._q = words
        e._i = index
        return e

    @classmethod
    def new(cls) -> PageTableEntry:
        """A detached zero entry."""
        return cls()

    @property
    def raw(self) -> int:
        """The 64-bit value, exactly as stored."""
        return int(self._q[self._i])

    @raw.setter
    def raw(self, value: int) -> None:
        self._q[self._i] = u64_arg(value, "raw")

    def is_unused(self) -> bool:
        """Whether the raw value is 0: any set bit, even a lone OS bit, makes it used (T-04)."""
        return self._q[self._i] == 0

    def set_unused(self) -> None:
        """Write 0."""
        self._q[self._i] = 0

    def flags(self) -> PageTableFlags:
        """Every bit outside the address field (T-05)."""
        return PageTableFlags(self._q[self._i] & ~ADDRESS_MASK & 0xFFFF_FFFF_FFFF_FFFF)

    def addr(self) -> PhysAddr:
        """The address field, bits 12..51 (may be 0)."""
        return PhysAddr._raw(self._q[self._i] & ADDRESS_MASK)

    def frame(self) -> PhysFrame[Size4KiB]:
        """The 4 KiB frame this entry points to.

        Raises `FrameNotPresent` when PRESENT is clear (checked first), `HugeFrame` when
        HUGE_PAGE is set (T-06).
        """
        raw = self._q[self._i]
        if not raw & PRESENT:
            raise FrameNotPresent()
        if raw & HUGE_PAGE:
            raise HugeFrame()
        return PhysFrame._make(raw & ADDRESS_MASK)  # type: ignore[no-any-return]

    def set_addr(self, addr: PhysAddr, flags: int) -> None:
        """Store ``addr | flags``; ``addr`` must be 4 KiB aligned (T-07).

        Like the crate, ``flags`` are not masked: address-field bits in them end up in the address.
        """
        if not isinstance(addr, PhysAddr):
            raise TypeError(f"set_addr needs a PhysAddr, got {type(addr).__name__}")
        f = u64_arg(flags, "flags")
        if addr._v & 0xFFF:
            raise Panic("assertion failed: addr.is_aligned(Size4KiB::SIZE)")
        self._q[self._i] = addr._v | f

    def set_frame(self, frame: PhysFrame[Size4KiB], flags: int) -> None:
        """Point at a 4 KiB ``frame``; HUGE_PAGE in ``flags`` is a `Panic` (T-08)."""
        if type(frame) is not PhysFrame:
            raise TypeError(f"set_frame needs a 4 KiB PhysFrame, got {type(frame).__name__}")
        f = u64_arg(flags, "flags")
        if f & HUGE_PAGE:
            raise Panic("assertion failed: !flags.contains(PageTableFlags::HUGE_PAGE)")
        self._q[self._i] = frame._start | f

    def set_flags(self, flags: int) -> None:
        """Replace every flag, keep the address (T-09; like the crate, flag bits in the address
        field end up in the address)."""
        f = u64_arg(flags, "flags")
        self._q[self._i] = (self._q[self._i] & ADDRESS_MASK) | f

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageTableEntry) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]  # entries are mutable views

    def __repr__(self) -> str:
        return f"PageTableEntry {{ addr: {self.addr()!r}, flags: {self.flags()!r} }}"


# -- tables -------------------------------------------------------------------------------


def _slot(index: int | PageTableIndex) -> int:
    i = index.__index__()
    if not 0 <= i < ENTRY_COUNT:
        raise Panic(f"index out of bounds: the len is 512 but the index is {i}")
    return i


class PageTable:
    """The 512 entries stored in the 4 KiB frame at physical address ``addr`` of ``memory`` (T-11).

    Indexing by an int outside 0..512 is a `Panic` (T-14); by a `PageTableIndex` it is always in
    range. Iteration is index based (PR #425), so a table anywhere in memory iterates safely.
    """

    __slots__ = ("_base", "_q", "memory", "phys")

    ENTRY_COUNT = ENTRY_COUNT

    def __init__(self, memory: PhysicalMemory, addr: int | PhysAddr) -> None:
        # (on every step of a MappedPageTable's walks: the common case costs two type tests)
        a = addr if type(addr) is int else int_arg(addr, "addr")  # range: PhysMemoryError
        if not isinstance(memory, PhysicalMemory):
            raise TypeError(f"memory must be a PhysicalMemory, got {type(memory).__name__}")
        if a & 0xFFF:
            raise PhysMemoryError(f"a page table must be 4 KiB aligned, got {a:#x}")
        #: The memory holding the table and its physical address.
        self.memory = memory
        self.phys = a
        self._q, self._base = memory.frame_words(a)

    def frame(self) -> PhysFrame[Size4KiB]:
        """The frame that holds this table."""
        return PhysFrame._make(self.phys)  # type: ignore[no-any-return]

    def __getitem__(self, index: int | PageTableIndex) -> PageTableEntry:
        return PageTableEntry._view(self._q, self._base + _slot(index))

    def __setitem__(self, index: int | PageTableIndex, entry: PageTableEntry | int) -> None:
        value = entry.raw if isinstance(entry, PageTableEntry) else u64_arg(entry, "entry")
        self._q[self._base + _slot(index)] = value

    def __len__(self) -> int:
        return ENTRY_COUNT

    def __iter__(self) -> Iterator[PageTableEntry]:
        return self.iter()

    def iter(self) -> Iterator[PageTableEntry]:
        """The 512 entries in index order (live views)."""
        q, base = self._q, self._base
        return (PageTableEntry._view(q, base + i) for i in range(ENTRY_COUNT))

    def raw_entries(self) -> list[int]:
        """The 512 raw values, copied."""
        return self._q[self._base : self._base + ENTRY_COUNT].tolist()

    def zero(self) -> None:
        """Set all 512 entries to 0."""
        self.memory.zero(self.phys, 4096)

    def is_empty(self) -> bool:
        """Whether all 512 entries are 0 (T-12)."""
        return not any(self._q[self._base : self._base + ENTRY_COUNT])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageTable) and self.raw_entries() == other.raw_entries()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        used = sum(1 for v in self._q[self._base : self._base + ENTRY_COUNT] if v)
        return f"PageTable(phys={self.phys:#x}, used_entries={used})"
