"""Indices into the paging hierarchy: `PageTableIndex`, `PageOffset`, `PageTableLevel`.

They live below `kvmpage.addr` (which hands them out) and are re-exported by `kvmpage.paging`.
"""

from __future__ import annotations

import enum

from kvmpage.panic import Panic

ENTRY_COUNT = 512
"""Entries in one page table, at every level."""


class PageTableIndex:
    """A 9-bit index into a page table: always in ``0..512`` (crate rule T-15)."""

    __slots__ = ("_i",)
    _i: int

    def __init__(self, index: int) -> None:
        """Like the crate's ``new``: an index of 512 or more is a `Panic`."""
        if not 0 <= index < ENTRY_COUNT:
            raise Panic(f"assertion failed: usize::from(index) < ENTRY_COUNT (index {index})")
        self._i = int(index)

    @classmethod
    def new(cls, index: int) -> PageTableIndex:
        """Same as the constructor (the crate's name)."""
        return cls(index)

    @classmethod
    def new_truncate(cls, index: int) -> PageTableIndex:
        """``index % 512``: never fails."""
        obj = object.__new__(cls)
        obj._i = index % ENTRY_COUNT
        return obj

    # -- Step (T-16): never leaves 0..512 ------------------------------------------------

    @staticmethod
    def forward_checked(start: PageTableIndex, count: int) -> PageTableIndex | None:
        """``start + count`` or None when that reaches 512."""
        i = start._i + count
        return PageTableIndex(i) if count >= 0 and i < ENTRY_COUNT else None

    @staticmethod
    def backward_checked(start: PageTableIndex, count: int) -> PageTableIndex | None:
        """``start - count`` or None below 0."""
        i = start._i - count
        return PageTableIndex(i) if count >= 0 and i >= 0 else None

    @staticmethod
    def steps_between(start: PageTableIndex, end: PageTableIndex) -> tuple[int, int | None]:
        """Steps from ``start`` to ``end``; ``(0, None)`` when ``end < start``."""
        if end._i < start._i:
            return (0, None)
        d = end._i - start._i
        return (d, d)

    def __index__(self) -> int:
        return self._i

    def __int__(self) -> int:
        return self._i

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageTableIndex) and other._i == self._i

    def _other(self, other: object) -> int:
        if not isinstance(other, PageTableIndex):
            raise TypeError(f"cannot compare PageTableIndex with {type(other).__name__}")
        return other._i

    def __lt__(self, other: object) -> bool:
        return self._i < self._other(other)

    def __le__(self, other: object) -> bool:
        return self._i <= self._other(other)

    def __gt__(self, other: object) -> bool:
        return self._i > self._other(other)

    def __ge__(self, other: object) -> bool:
        return self._i >= self._other(other)

    def __hash__(self) -> int:
        return hash(("PageTableIndex", self._i))

    def __repr__(self) -> str:
        return f"PageTableIndex({self._i})"


class PageOffset:
    """A 12-bit offset into a 4 KiB page: always in ``0..4096`` (crate rule T-17)."""

    __slots__ = ("_o",)
    _o: int

    def __init__(self, offset: int) -> None:
        """Like the crate's ``new``: an offset of 4096 or more is a `Panic`."""
        if not 0 <= offset < 4096:
            raise Panic(f"assertion failed: offset < (1 << 12) (offset {offset})")
        self._o = int(offset)

    @classmethod
    def new(cls, offset: int) -> PageOffset:
        """Same as the constructor (the crate's name)."""
        return cls(offset)

    @classmethod
    def new_truncate(cls, offset: int) -> PageOffset:
        """``offset % 4096``: never fails."""
        return cls(offset % 4096)

    def __index__(self) -> int:
        return self._o

    def __int__(self) -> int:
        return self._o

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PageOffset) and other._o == self._o

    def _other(self, other: object) -> int:
        if not isinstance(other, PageOffset):
            raise TypeError(f"cannot compare PageOffset with {type(other).__name__}")
        return other._o

    def __lt__(self, other: object) -> bool:
        return self._o < self._other(other)

    def __le__(self, other: object) -> bool:
        return self._o <= self._other(other)

    def __gt__(self, other: object) -> bool:
        return self._o > self._other(other)

    def __ge__(self, other: object) -> bool:
        return self._o >= self._other(other)

    def __hash__(self) -> int:
        return hash(("PageOffset", self._o))

    def __repr__(self) -> str:
        return f"PageOffset({self._o})"


class PageTableLevel(enum.IntEnum):
    """A level of the 4-level hierarchy; ``One`` holds 4 KiB leaves, ``Four`` is the PML4 (T-18)."""

    One = 1
    Two = 2
    Three = 3
    Four = 4

    def next_lower_level(self) -> PageTableLevel | None:
        """Four -> Three -> Two -> One -> None."""
        return PageTableLevel(self - 1) if self > 1 else None

    def next_higher_level(self) -> PageTableLevel | None:
        """One -> Two -> Three -> Four -> None (there is no level five, T-20)."""
        return PageTableLevel(self + 1) if self < 4 else None

    def table_address_space_alignment(self) -> int:
        """Bytes spanned by a whole table at this level: ``2 ** (9 * level + 12)`` (T-19)."""
        return 1 << (9 * self + 12)

    def entry_address_space_alignment(self) -> int:
        """Bytes spanned by one entry at this level: ``2 ** (9 * (level - 1) + 12)`` (T-19)."""
        return 1 << (9 * (self - 1) + 12)
