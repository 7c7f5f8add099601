"""Virtual and physical addresses: `VirtAddr`, `VirtAddr57`, `PhysAddr`, `align_up` / `align_down`.

A `VirtAddr` is always canonical (bits 48..63 copy bit 47) and a `PhysAddr` always fits in 52 bits,
unless built with ``new_unsafe``. Plain ``+`` / ``-`` never jump the non-canonical hole between
``0x0000_7fff_ffff_ffff`` and ``0xffff_8000_0000_0000``: a result inside it is a `Panic`, as in the
crate (issues #452, #537). The step helpers `VirtAddr.forward_checked`, `backward_checked` and
`steps_between` are the ones that do jump it.

`VirtAddr57` is the same type for 5-level paging (CR4.LA57, 57-bit addresses, the hole between
``0x00ff_ffff_ffff_ffff`` and ``0xff00_0000_0000_0000``): an extension beyond the crate, which
has no 5-level paging (its issue #435; the separate type is what its PR #605 proposes).

Rule ids (A-xx, L5-xx) refer to docs/rules.md.
"""

from __future__ import annotations

from typing import ClassVar, Self, SupportsIndex, TypeVar, overload

from kvmpage._addr_base import (
    _PHYS_LIMIT,
    U64_MAX,
    PhysAddrNotValid,
    VirtAddrNotValid,
    _Addr,
    _u64,
    align_down,
    align_up,
    canonicalize,
    is_canonical,
)
from kvmpage.index import PageOffset, PageTableIndex, PageTableLevel
from kvmpage.panic import Panic

__all__ = [
    "U64_MAX", "AnyVirtAddr", "PhysAddr", "PhysAddrNotValid", "VirtAddr", "VirtAddr57",
    "VirtAddrNotValid",
    "align_down", "align_up", "canonicalize", "is_canonical",
]  # fmt: skip


class _VirtAddrBase(_Addr):
    """A canonical virtual address of ``_LEVELS``-level paging: the shared code of `VirtAddr`
    (48 bits, the crate's) and `VirtAddr57` (57 bits, CR4.LA57; not in the crate).

    Every rule of the crate's ``VirtAddr`` (A-01..A-24) holds for both with the width changed:
    bits ``_BITS..63`` copy bit ``_BITS - 1``, and the non-canonical hole lies between
    ``2**(_BITS-1)`` and ``2**64 - 2**(_BITS-1)``. The two types never mix (`TypeError` on
    comparison and subtraction); ``VirtAddr57(a)`` widens a `VirtAddr` (always canonical at 57
    bits), ``VirtAddr.try_new(b)`` narrows a `VirtAddr57` when it fits.
    """

    __slots__ = ()
    #: paging levels whose canonical form this type keeps (4 or 5) and the address width
    _LEVELS: ClassVar[int]
    _BITS: ClassVar[int]

    def __init__(self, addr: SupportsIndex) -> None:
        v = _u64(addr, "a virtual address")
        if canonicalize(v, self._LEVELS) != v:
            raise Panic(
                f"virtual address must be sign extended in bits {self._BITS} to 64 (got {v:#x})"
            )
        self._v = v

    @classmethod
    def _raw(cls, v: int) -> Self:
        obj = object.__new__(cls)
        obj._v = v
        return obj

    @classmethod
    def new(cls, addr: SupportsIndex) -> Self:
        """The crate's ``new``: panics on a non-canonical address (A-03)."""
        return cls(addr)

    @classmethod
    def try_new(cls, addr: SupportsIndex) -> Self:
        """Raise `VirtAddrNotValid` (original value kept) unless ``addr`` is canonical (A-02)."""
        v = _u64(addr, "a virtual address")
        if canonicalize(v, cls._LEVELS) != v:
            raise VirtAddrNotValid(v, cls._BITS)
        return cls._raw(v)

    @classmethod
    def new_truncate(cls, addr: SupportsIndex) -> Self:
        """Keep the low ``_BITS`` bits and copy the top one into the bits above (A-04)."""
        return cls._raw(canonicalize(_u64(addr, "a virtual address"), cls._LEVELS))

    @classmethod
    def new_unsafe(cls, addr: SupportsIndex) -> Self:
        """No check at all: the caller promises ``addr`` is canonical (A-05)."""
        return cls._raw(_u64(addr, "a virtual address"))

    @classmethod
    def zero(cls) -> Self:
        """The address 0."""
        return cls._raw(0)

    # -- alignment (A-11..A-13) ---------------------------------------------------------

    def align_up(self, align: int) -> Self:
        """Align upwards, then sign-truncate: may jump the hole (A-11)."""
        return self._raw(canonicalize(align_up(self._v, align), self._LEVELS))

    def align_down(self, align: int) -> Self:
        """Align downwards, then sign-truncate (A-12)."""
        return self._raw(canonicalize(align_down(self._v, align), self._LEVELS))

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

    def page_table_index(self, level: PageTableLevel | int) -> PageTableIndex:
        """The index into the table of ``level`` (1..4, or 1..5 for a `VirtAddr57`)."""
        n = int(level)
        if not 1 <= n <= self._LEVELS:
            raise ValueError(f"{type(self).__name__} has levels 1..{self._LEVELS}, not {n}")
        return PageTableIndex((self._v >> (12 + 9 * (n - 1))) & 511)

    # -- arithmetic: never jumps the hole (A-17..A-20) ------------------------------------

    def __add__(self, n: int) -> Self:
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        r = self._v + _u64(n, "an offset")
        if r > U64_MAX:
            raise Panic("attempt to add with overflow")
        if canonicalize(r, self._LEVELS) != r:
            raise Panic(
                "attempt to add resulted in non-canonical virtual address: "
                f"VirtAddrNotValid({r:#x})"
            )
        return self._raw(r)

    @overload
    def __sub__(self, other: Self) -> int: ...

    @overload
    def __sub__(self, other: int) -> Self: ...

    def __sub__(self, other: int | Self) -> Self | int:
        if isinstance(other, _VirtAddrBase):
            if type(other) is not type(self):
                raise TypeError(
                    f"cannot subtract {type(other).__name__} from {type(self).__name__}"
                )
            if other._v > self._v:
                raise Panic("attempt to subtract with overflow")
            return self._v - other._v
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        r = self._v - _u64(other, "an offset")
        if r < 0:
            raise Panic("attempt to subtract with overflow")
        if canonicalize(r, self._LEVELS) != r:
            raise Panic(
                "attempt to subtract resulted in non-canonical virtual address: "
                f"VirtAddrNotValid({r:#x})"
            )
        return self._raw(r)

    def sub_addr(self, other: Self) -> int:
        """``self - other`` as a byte count, typed (the hole is included, A-20)."""
        r = self - other
        assert isinstance(r, int)
        return r

    def sub(self, n: int) -> Self:
        """``self - n`` as an address, typed (panics inside the hole or below 0, A-18)."""
        r = self - n
        assert isinstance(r, _VirtAddrBase)
        return r

    # -- Step: jumps the hole (A-22..A-24) -----------------------------------------------

    @staticmethod
    def forward_checked(start: _V, count: int) -> _V | None:
        """``start`` moved up by ``count`` bytes, skipping the hole; None past the top (A-22)."""
        bits = start._BITS
        if count < 0 or count > 1 << bits:
            return None
        r = start._v + count
        if r > U64_MAX:
            return None
        top = r >> (bits - 1)
        if top == 0b1:
            r |= U64_MAX ^ ((1 << bits) - 1)
        elif top == 0b10:
            return None
        return start._raw(r)

    @staticmethod
    def backward_checked(start: _V, count: int) -> _V | None:
        """``start`` moved down by ``count`` bytes, skipping the hole; None below 0 (A-23)."""
        bits = start._BITS
        if count < 0 or count > 1 << bits:
            return None
        r = start._v - count
        if r < 0:
            return None
        top = r >> (bits - 1)
        if top == (1 << (65 - bits)) - 2:
            r &= (1 << (bits - 1)) - 1
        elif top == (1 << (65 - bits)) - 3:
            return None
        return start._raw(r)

    @staticmethod
    def forward(start: _V, count: int) -> _V:
        """`forward_checked` that panics instead of returning None."""
        r = _VirtAddrBase.forward_checked(start, count)
        if r is None:
            raise Panic("overflow in `Step::forward`")
        return r

    @staticmethod
    def backward(start: _V, count: int) -> _V:
        """`backward_checked` that panics instead of returning None."""
        r = _VirtAddrBase.backward_checked(start, count)
        if r is None:
            raise Panic("overflow in `Step::backward`")
        return r

    @staticmethod
    def steps_between(start: _V, end: _V) -> tuple[int, int | None]:
        """Bytes from ``start`` to ``end`` minus the hole; ``(0, None)`` if reversed (A-24)."""
        if type(end) is not type(start):
            raise TypeError(f"cannot mix {type(start).__name__} and {type(end).__name__}")
        if end._v < start._v:
            return (0, None)
        d = (end._v - start._v) & ((1 << start._BITS) - 1)
        return (d, d)


_V = TypeVar("_V", bound=_VirtAddrBase)


class VirtAddr(_VirtAddrBase):
    """A canonical 64-bit virtual address of 4-level paging, the crate's (A-01).

    ``VirtAddr(x)`` is the crate's ``new``: a non-canonical ``x`` is a `Panic`. Use `try_new` to get
    a `VirtAddrNotValid` error instead, or `new_truncate` to sign-extend bit 47.
    """

    __slots__ = ()
    _LEVELS = 4
    _BITS = 48


class VirtAddr57(_VirtAddrBase):
    """A canonical virtual address of 5-level paging (CR4.LA57): bits 57..63 copy bit 56.

    Not in the crate (its issue #435; docs/divergences.md, rules L5-01..L5-03). It has the
    `VirtAddr` API with 57 bits, plus `p5_index`. Every 48-bit canonical address is canonical
    here too, so ``VirtAddr57(virt_addr)`` always works; the reverse is ``VirtAddr.try_new``.
    """

    __slots__ = ()
    _LEVELS = 5
    _BITS = 57

    def p5_index(self) -> PageTableIndex:
        """Bits 48..56: index into the level-5 table (L5-03)."""
        return PageTableIndex((self._v >> 48) & 511)


#: Either virtual address type: what a 5-level mapper takes (a 4-level one takes `VirtAddr`).
AnyVirtAddr = VirtAddr | VirtAddr57


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
