"""What both address types share: u64 checks, canonical forms, alignment, the error types and
the immutable `_Addr` base. Public names are re-exported by `kvmpage.addr`, where they belong.
"""

from __future__ import annotations

from typing import SupportsIndex

from kvmpage.panic import Panic

U64_MAX = (1 << 64) - 1
_HOLE_LOW = 1 << 47  # first non-canonical address of 4-level paging
_PHYS_LIMIT = 1 << 52


def _u64(value: SupportsIndex, what: str) -> int:
    v = value.__index__()
    if not 0 <= v <= U64_MAX:
        raise ValueError(f"{what} must be an unsigned 64-bit integer, got {v:#x}")
    return v


def canonicalize(v: int, levels: int = 4) -> int:
    """``v`` made canonical for ``levels``-level paging: bits ``48..63`` (4 levels) or ``57..63``
    (5 levels) become copies of the top implemented bit (47 or 56), as the crate's
    ``VirtAddr::new_truncate`` does for 4 levels. The one sign extension of kvmpage."""
    if levels == 4:
        v &= 0xFFFF_FFFF_FFFF
        return v | 0xFFFF_0000_0000_0000 if v & _HOLE_LOW else v
    bits = 9 * levels + 12
    v &= (1 << bits) - 1
    return v | (U64_MAX ^ ((1 << bits) - 1)) if v >> (bits - 1) else v


def is_canonical(v: int, levels: int = 4) -> bool:
    """Whether ``v`` (a u64) is canonical for ``levels``-level paging."""
    return canonicalize(v, levels) == v


def _is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def align_down(addr: int, align: int) -> int:
    """Largest multiple of ``align`` not above ``addr``; ``align`` must be a power of two (A-09)."""
    if not _is_power_of_two(align):
        raise Panic("`align` must be a power of two")
    return addr & ~(align - 1)


def align_up(addr: int, align: int) -> int:
    """Smallest multiple of ``align`` not below ``addr`` (A-10). Panics on u64 overflow."""
    if not _is_power_of_two(align):
        raise Panic("`align` must be a power of two")
    mask = align - 1
    if addr & mask == 0:
        return addr
    r = (addr | mask) + 1
    if r > U64_MAX:
        raise Panic("attempt to add with overflow")
    return r


class _AddrNotValid(ValueError):
    """A value that is not a valid address of some kind; ``.value`` is the full original u64."""

    _WHY = ""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    @property
    def addr(self) -> int:
        """Alias of ``value`` (the crate's tuple field ``.0``)."""
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value:#x})"

    def __str__(self) -> str:
        return f"{self.value:#x} {self._WHY}"


class VirtAddrNotValid(_AddrNotValid):
    """Not a canonical virtual address; ``.value`` is the full original u64 (A-07), ``.bits``
    the width it was checked against (48, or 57 for a `VirtAddr57`)."""

    def __init__(self, value: int, bits: int = 48) -> None:
        super().__init__(value)
        self.bits = bits

    def __str__(self) -> str:
        b = self.bits
        return (
            f"{self.value:#x} is not a canonical virtual address "
            f"(bits {b}..63 must copy bit {b - 1})"
        )


class PhysAddrNotValid(_AddrNotValid):
    """A value with any of bits 52..63 set; ``.value`` is the full original u64 (A-26)."""

    _WHY = "is not a valid physical address (bits 52..63 must be zero)"


class _Addr:
    """Shared behaviour of the two address types: an immutable u64 with ordering and formatting."""

    __slots__ = ("_v",)
    _v: int

    def as_u64(self) -> int:
        """The raw 64-bit value."""
        return self._v

    def is_null(self) -> bool:
        """Whether the address is 0."""
        return self._v == 0

    def __index__(self) -> int:
        return self._v

    def __int__(self) -> int:
        return self._v

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._v))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._v == self._v

    def _other(self, other: object) -> int:
        if type(other) is not type(self):
            raise TypeError(f"cannot compare {type(self).__name__} with {type(other).__name__}")
        return other._v

    def __lt__(self, other: object) -> bool:
        return self._v < self._other(other)

    def __le__(self, other: object) -> bool:
        return self._v <= self._other(other)

    def __gt__(self, other: object) -> bool:
        return self._v > self._other(other)

    def __ge__(self, other: object) -> bool:
        return self._v >= self._other(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._v:#x})"

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "xXobd":
            return format(self._v, spec)
        return format(repr(self), spec)
