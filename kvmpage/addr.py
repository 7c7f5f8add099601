"""Virtual and physical addresses: `VirtAddr`, `PhysAddr` and the free `align_up` / `align_down`.

A `VirtAddr` is always canonical (bits 48..63 copy bit 47) and a `PhysAddr` always fits in 52 bits,
unless built with ``new_unsafe``. Plain ``+`` / ``-`` never jump the non-canonical hole between
``0x0000_7fff_ffff_ffff`` and ``0xffff_8000_0000_0000``: a result inside it is a `Panic`, as in the
crate (issues #452, #537). The step helpers `VirtAddr.forward_checked`, `backward_checked` and
`steps_between` are the ones that do jump it.

Rule ids (A-xx) refer to the behaviour checklist of the `x86_64` crate.
"""

from __future__ import annotations

from typing import SupportsIndex, overload

from kvmpage.index import PageOffset, PageTableIndex, PageTableLevel
from kvmpage.panic import Panic

U64_MAX = (1 << 64) - 1
_HOLE_LOW = 1 << 47  # first non-canonical address
_HOLE_HIGH = 0xFFFF_8000_0000_0000  # first canonical upper-half address
_PHYS_LIMIT = 1 << 52
_STEP_LIMIT = 1 << 48


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


_sign_extend_47 = canonicalize


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
    """Not a canonical virtual address; ``.value`` is the full original u64 (A-07)."""

    _WHY = "is not a canonical virtual address (bits 48..63 must copy bit 47)"


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


class VirtAddr(_Addr):
    """A canonical 64-bit virtual address (A-01).

    ``VirtAddr(x)`` is the crate's ``new``: a non-canonical ``x`` is a `Panic`. Use `try_new` to get
    a `VirtAddrNotValid` error instead, or `new_truncate` to sign-extend bit 47.
    """

    __slots__ = ()

    def __init__(self, addr: SupportsIndex) -> None:
        v = _u64(addr, "a virtual address")
        if _sign_extend_47(v) != v:
            raise Panic(f"virtual address must be sign extended in bits 48 to 64 (got {v:#x})")
        self._v = v

    @classmethod
    def _raw(cls, v: int) -> VirtAddr:
        obj = object.__new__(cls)
        obj._v = v
        return obj

    @classmethod
    def new(cls, addr: SupportsIndex) -> VirtAddr:
        """The crate's ``new``: panics on a non-canonical address (A-03)."""
        return cls(addr)

    @classmethod
    def try_new(cls, addr: SupportsIndex) -> VirtAddr:
        """Raise `VirtAddrNotValid` (original value kept) unless ``addr`` is canonical (A-02)."""
        v = _u64(addr, "a virtual address")
        if _sign_extend_47(v) != v:
            raise VirtAddrNotValid(v)
        return cls._raw(v)

    @classmethod
    def new_truncate(cls, addr: SupportsIndex) -> VirtAddr:
        """Keep bits 0..47 and copy bit 47 into bits 48..63 (A-04)."""
        return cls._raw(_sign_extend_47(_u64(addr, "a virtual address")))

    @classmethod
    def new_unsafe(cls, addr: SupportsIndex) -> VirtAddr:
        """No check at all: the caller promises ``addr`` is canonical (A-05)."""
        return cls._raw(_u64(addr, "a virtual address"))

    @classmethod
    def zero(cls) -> VirtAddr:
        """The address 0."""
        return cls._raw(0)

    # -- alignment (A-11..A-13) ---------------------------------------------------------

    def align_up(self, align: int) -> VirtAddr:
        """Align upwards, then sign-truncate: may jump the hole (A-11)."""
        return VirtAddr._raw(_sign_extend_47(align_up(self._v, align)))

    def align_down(self, align: int) -> VirtAddr:
        """Align downwards, then sign-truncate (A-12)."""
        return VirtAddr._raw(_sign_extend_47(align_down(self._v, align)))

    def is_aligned(self, align: int) -> bool:
        """Whether `align_down` leaves the address unchanged (A-13)."""
        return self.align_down(align) == self

    # -- indices (A-15, A-16) -----------------------------------------------------------

    def page_offset(self) -> PageOffset:
        """Bits 0..11."""
        return PageOffset(self._v & 0xFFF)

    def p1_index(self) -> PageTableIndex:
        """Bits 12..20: index into the level-1 table."""
        return PageTableIndex((self._v >> 12) & 511)

    def p2_index(self) -> PageTableIndex:
        """Bits 21..29: index into the level-2 table."""
        return PageTableIndex((self._v >> 21) & 511)

    def p3_index(self) -> PageTableIndex:
        """Bits 30..38: index into the level-3 table."""
        return PageTableIndex((self._v >> 30) & 511)

    def p4_index(self) -> PageTableIndex:
        """Bits 39..47: index into the level-4 table."""
        return PageTableIndex((self._v >> 39) & 511)

    def page_table_index(self, level: PageTableLevel) -> PageTableIndex:
        """The index into the table of ``level``."""
        return PageTableIndex((self._v >> (12 + 9 * (int(level) - 1))) & 511)

    # -- arithmetic: never jumps the hole (A-17..A-20) ------------------------------------

    def __add__(self, n: int) -> VirtAddr:
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        r = self._v + _u64(n, "an offset")
        if r > U64_MAX:
            raise Panic("attempt to add with overflow")
        if _sign_extend_47(r) != r:
            raise Panic(
                "attempt to add resulted in non-canonical virtual address: "
                f"VirtAddrNotValid({r:#x})"
            )
        return VirtAddr._raw(r)

    @overload
    def __sub__(self, other: VirtAddr) -> int: ...

    @overload
    def __sub__(self, other: int) -> VirtAddr: ...

    def __sub__(self, other: int | VirtAddr) -> VirtAddr | int:
        if isinstance(other, VirtAddr):
            if other._v > self._v:
                raise Panic("attempt to subtract with overflow")
            return self._v - other._v
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        r = self._v - _u64(other, "an offset")
        if r < 0:
            raise Panic("attempt to subtract with overflow")
        if _sign_extend_47(r) != r:
            raise Panic(
                "attempt to subtract resulted in non-canonical virtual address: "
                f"VirtAddrNotValid({r:#x})"
            )
        return VirtAddr._raw(r)

    def sub_addr(self, other: VirtAddr) -> int:
        """``self - other`` as a byte count, typed (the hole is included, A-20)."""
        r = self - other
        assert isinstance(r, int)
        return r

    def sub(self, n: int) -> VirtAddr:
        """``self - n`` as an address, typed (panics inside the hole or below 0, A-18)."""
        r = self - n
        assert isinstance(r, VirtAddr)
        return r

    # -- Step: jumps the hole (A-22..A-24) -----------------------------------------------

    @staticmethod
    def forward_checked(start: VirtAddr, count: int) -> VirtAddr | None:
        """``start`` moved up by ``count`` bytes, skipping the hole; None past the top (A-22)."""
        if count < 0 or count > _STEP_LIMIT:
            return None
        r = start._v + count
        if r > U64_MAX:
            return None
        top = r >> 47
        if top == 0b1:
            r |= 0xFFFF_0000_0000_0000
        elif top == 0b10:
            return None
        return VirtAddr._raw(r)

    @staticmethod
    def backward_checked(start: VirtAddr, count: int) -> VirtAddr | None:
        """``start`` moved down by ``count`` bytes, skipping the hole; None below 0 (A-23)."""
        if count < 0 or count > _STEP_LIMIT:
            return None
        r = start._v - count
        if r < 0:
            return None
        top = r >> 47
        if top == 0x1FFFE:
            r &= (1 << 47) - 1
        elif top == 0x1FFFD:
            return None
        return VirtAddr._raw(r)

    @staticmethod
    def forward(start: VirtAddr, count: int) -> VirtAddr:
        """`forward_checked` that panics instead of returning None."""
        r = VirtAddr.forward_checked(start, count)
        if r is None:
            raise Panic("overflow in `Step::forward`")
        return r

    @staticmethod
    def backward(start: VirtAddr, count: int) -> VirtAddr:
        """`backward_checked` that panics instead of returning None."""
        r = VirtAddr.backward_checked(start, count)
        if r is None:
            raise Panic("overflow in `Step::backward`")
        return r

    @staticmethod
    def steps_between(start: VirtAddr, end: VirtAddr) -> tuple[int, int | None]:
        """Bytes from ``start`` to ``end`` minus the hole; ``(0, None)`` if reversed (A-24)."""
        if end._v < start._v:
            return (0, None)
        d = (end._v - start._v) & (_STEP_LIMIT - 1)
        return (d, d)


class PhysAddr(_Addr):
    """A 52-bit physical address (A-26).

    ``PhysAddr(x)`` is the crate's ``new``: any of bits 52..63 set is a `Panic`; `try_new` raises
    `PhysAddrNotValid` instead, `new_truncate` clears them.
    """

    __slots__ = ()

    def __init__(self, addr: SupportsIndex) -> None:
        v = _u64(addr, "a physical address")
        if v >= _PHYS_LIMIT:
            raise Panic(
                f"physical addresses must not have any bits in the range 52 to 64 set (got {v:#x})"
            )
        self._v = v

    @classmethod
    def _raw(cls, v: int) -> PhysAddr:
        obj = object.__new__(cls)
        obj._v = v
        return obj

    @classmethod
    def new(cls, addr: SupportsIndex) -> PhysAddr:
        """The crate's ``new``: panics when bits 52..63 are not zero."""
        return cls(addr)

    @classmethod
    def try_new(cls, addr: SupportsIndex) -> PhysAddr:
        """Raise `PhysAddrNotValid` (with the original value) when bits 52..63 are not zero."""
        v = _u64(addr, "a physical address")
        if v >= _PHYS_LIMIT:
            raise PhysAddrNotValid(v)
        return cls._raw(v)

    @classmethod
    def new_truncate(cls, addr: SupportsIndex) -> PhysAddr:
        """``addr mod 2**52`` (A-27)."""
        return cls._raw(_u64(addr, "a physical address") % _PHYS_LIMIT)

    @classmethod
    def new_unsafe(cls, addr: SupportsIndex) -> PhysAddr:
        """No check at all."""
        return cls._raw(_u64(addr, "a physical address"))

    @classmethod
    def zero(cls) -> PhysAddr:
        """The address 0."""
        return cls._raw(0)

    def align_up(self, align: int) -> PhysAddr:
        """Align upwards; panics when the result leaves the 52-bit space (A-28)."""
        return PhysAddr(align_up(self._v, align))

    def align_down(self, align: int) -> PhysAddr:
        """Align downwards (never fails)."""
        return PhysAddr._raw(align_down(self._v, align))

    def is_aligned(self, align: int) -> bool:
        """Whether the address is a multiple of ``align`` (a power of two)."""
        return self.align_down(align) == self

    def __add__(self, n: int) -> PhysAddr:
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        r = self._v + _u64(n, "an offset")
        if r > U64_MAX:
            raise Panic("called `Option::unwrap()` on a `None` value (PhysAddr + u64 overflowed)")
        return PhysAddr(r)

    @overload
    def __sub__(self, other: PhysAddr) -> int: ...

    @overload
    def __sub__(self, other: int) -> PhysAddr: ...

    def __sub__(self, other: int | PhysAddr) -> PhysAddr | int:
        if isinstance(other, PhysAddr):
            if other._v > self._v:
                raise Panic("called `Option::unwrap()` on a `None` value (PhysAddr - PhysAddr)")
            return self._v - other._v
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        r = self._v - _u64(other, "an offset")
        if r < 0:
            raise Panic("called `Option::unwrap()` on a `None` value (PhysAddr - u64 underflowed)")
        return PhysAddr(r)

    def sub_addr(self, other: PhysAddr) -> int:
        """``self - other`` as a byte count, typed."""
        r = self - other
        assert isinstance(r, int)
        return r

    def sub(self, n: int) -> PhysAddr:
        """``self - n`` as an address, typed."""
        r = self - n
        assert isinstance(r, PhysAddr)
        return r
