"""Page sizes, virtual pages, physical frames and their ranges (checklist rules P-01..P-25).

Types are size-generic the way the crate writes them: ``Page[Size2MiB]`` and
``PhysFrame[Size1GiB]`` are the 2 MiB page and 1 GiB frame types; bare ``Page`` / ``PhysFrame``
are the 4 KiB ones (``Page[Size4KiB] is Page``). A page and a frame of different sizes never mix:
comparing, subtracting or ranging them raises `TypeError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Generic, Self, TypeVar

from kvmpage.addr import U64_MAX, AnyVirtAddr, PhysAddr, VirtAddr, _VirtAddrBase, canonicalize
from kvmpage.index import PageTableIndex, PageTableLevel
from kvmpage.panic import Panic

# -- sizes (P-01..P-03) ------------------------------------------------------------------


class PageSize:
    """A page size: ``SIZE`` in bytes and the ``DEBUG_STR`` used in representations.

    The three subclasses are the only sizes; they are markers and are never instantiated.
    """

    SIZE: ClassVar[int]
    DEBUG_STR: ClassVar[str]
    #: Level of the table whose entry maps a page of this size (One for 4 KiB).
    LEVEL: ClassVar[PageTableLevel]

    def __init__(self) -> None:
        raise TypeError("page sizes are marker types and are never instantiated")


class Size4KiB(PageSize):
    """A 4 KiB page, mapped by a level-1 entry."""

    SIZE = 4096
    DEBUG_STR = "4KiB"
    LEVEL = PageTableLevel.One


class Size2MiB(PageSize):
    """A 2 MiB page, mapped by a level-2 entry with HUGE_PAGE."""

    SIZE = 4096 * 512
    DEBUG_STR = "2MiB"
    LEVEL = PageTableLevel.Two


class Size1GiB(PageSize):
    """A 1 GiB page, mapped by a level-3 entry with HUGE_PAGE."""

    SIZE = 4096 * 512 * 512
    DEBUG_STR = "1GiB"
    LEVEL = PageTableLevel.Three


PAGE_SIZES: tuple[type[PageSize], ...] = (Size4KiB, Size2MiB, Size1GiB)

S = TypeVar("S", bound=PageSize)


class AddressNotAligned(ValueError):
    """``from_start_address`` got an address that is not a multiple of the page size (P-05)."""

    def __init__(self, addr: int = 0, size: int = 0) -> None:
        super().__init__(addr, size)
        #: The rejected address (raw u64) and the alignment it lacked.
        self.addr = addr
        self.size = size

    def __str__(self) -> str:
        return "the given address was not sufficiently aligned"

    def __repr__(self) -> str:
        return "AddressNotAligned"


def _bytes_of(count: int, size: int) -> int:
    """``count * size`` as the crate's u64 multiply: a product past u64::MAX panics (P-10)."""
    n = count * size
    if n > U64_MAX:
        raise Panic("attempt to multiply with overflow")
    return n


def _check_size(size: object) -> type[PageSize]:
    if not (isinstance(size, type) and size in PAGE_SIZES):
        raise TypeError(f"a page size must be Size4KiB, Size2MiB or Size1GiB, not {size!r}")
    return size


# -- the shared machinery of Page and PhysFrame -------------------------------------------


class _Unit(Generic[S]):
    """A naturally aligned block of ``SIZE`` bytes in some address space.

    ``Page`` and ``PhysFrame`` derive from it; each specialisation (``Page[Size2MiB]``...) is a
    real subclass whose ``SIZE`` and ``SIZE_TYPE`` are fixed, so ``type(x)`` tells the size.
    """

    __slots__ = ("_start",)
    _start: int

    SIZE: ClassVar[int] = 4096
    SIZE_TYPE: ClassVar[type[PageSize]] = Size4KiB
    _KIND: ClassVar[str]
    _ADDR: ClassVar[Any]
    _SPECIALISED: ClassVar[dict[type[PageSize], type]]

    def __class_getitem__(cls, size: Any) -> Any:
        if isinstance(size, TypeVar) or size is Any:  # typing use: Page[S], _Unit[Any]
            return super().__class_getitem__(size)  # type: ignore[misc]
        return cls._SPECIALISED[_check_size(size)]

    @classmethod
    def _make(cls, start: int) -> Any:
        obj = object.__new__(cls)
        obj._start = start
        return obj

    def __init__(self, *_: object) -> None:
        raise TypeError(
            f"build a {self._KIND} with {self._KIND}.containing_address(addr) or "
            f"{self._KIND}.from_start_address(addr)"
        )

    # -- construction (P-05, P-06, P-21) ----------------------------------------------

    @classmethod
    def _addr_value(cls, addr: object) -> int:
        if type(addr) is not cls._ADDR:
            raise TypeError(f"{cls._KIND} needs a {cls._ADDR.__name__}, got {type(addr).__name__}")
        return addr._v  # type: ignore[attr-defined, no-any-return]

    @classmethod
    def size(cls) -> int:
        """Bytes in one unit of this size (P-04)."""
        return cls.SIZE

    # -- comparison and hashing (P-11) ------------------------------------------------

    def _same(self, other: object) -> _Unit[S]:
        if type(other) is not type(self):
            raise TypeError(f"cannot mix {type(self).__name__} and {type(other).__name__}")
        return other

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._start == self._start

    def __hash__(self) -> int:
        return hash((self._KIND, self.SIZE, self._start))

    def __lt__(self, other: object) -> bool:
        return self._start < self._same(other)._start

    def __le__(self, other: object) -> bool:
        return self._start <= self._same(other)._start

    def __gt__(self, other: object) -> bool:
        return self._start > self._same(other)._start

    def __ge__(self, other: object) -> bool:
        return self._start >= self._same(other)._start

    def __repr__(self) -> str:
        return f"{self._KIND}[{self.SIZE_TYPE.DEBUG_STR}]({self._start:#x})"


def _specialise(base: type, size: type[PageSize]) -> type:
    name = f"{base.__name__}[{size.DEBUG_STR}]"
    return type(name, (base,), {"__slots__": (), "SIZE": size.SIZE, "SIZE_TYPE": size})


# -- Page ---------------------------------------------------------------------------------


class Page(_Unit[S]):
    """A virtual memory page of size ``S`` (4 KiB when written bare), P-04..P-20."""

    __slots__ = ()
    _KIND = "Page"
    _ADDR: ClassVar[Any] = VirtAddr
    #: paging levels whose canonical addresses these pages have (`Page57`: 5)
    _LEVELS: ClassVar[int] = 4

    @classmethod
    def from_start_address(cls, address: AnyVirtAddr) -> Self:
        """The page starting at ``address``; `AddressNotAligned` unless it is aligned (P-05)."""
        v = cls._addr_value(address)
        if v & (cls.SIZE - 1):
            raise AddressNotAligned(v, cls.SIZE)
        return cls._make(v)  # type: ignore[no-any-return]

    @classmethod
    def from_start_address_unchecked(cls, address: AnyVirtAddr) -> Self:
        """The page at ``address`` without the alignment check (the caller promises it)."""
        return cls._make(cls._addr_value(address))  # type: ignore[no-any-return]

    @classmethod
    def containing_address(cls, address: AnyVirtAddr) -> Self:
        """The page that contains ``address`` (P-06)."""
        v = cls._addr_value(address)
        return cls._make(canonicalize(v & ~(cls.SIZE - 1), cls._LEVELS))  # type: ignore[no-any-return]

    def start_address(self) -> VirtAddr:
        """The first address of the page (a `VirtAddr57` for a `Page57`)."""
        return self._ADDR._raw(self._start)  # type: ignore[no-any-return]

    # -- indices (P-07, P-08) ---------------------------------------------------------

    def p4_index(self) -> PageTableIndex:
        """Index of this page in the level-4 table."""
        return PageTableIndex((self._start >> 39) & 511)

    def p3_index(self) -> PageTableIndex:
        """Index of this page in the level-3 table."""
        return PageTableIndex((self._start >> 30) & 511)

    def p2_index(self) -> PageTableIndex:
        """Index in the level-2 table; 4 KiB and 2 MiB pages only (NotGiantPageSize, P-02)."""
        if self.SIZE_TYPE is Size1GiB:
            raise TypeError("p2_index is only defined for 4KiB and 2MiB pages")
        return PageTableIndex((self._start >> 21) & 511)

    def p1_index(self) -> PageTableIndex:
        """Index in the level-1 table; 4 KiB pages only."""
        if self.SIZE_TYPE is not Size4KiB:
            raise TypeError("p1_index is only defined for 4KiB pages")
        return PageTableIndex((self._start >> 12) & 511)

    def page_table_index(self, level: PageTableLevel) -> PageTableIndex:
        """Index at any level; below the page's own level it is 0 (P-07)."""
        return PageTableIndex((self._start >> (12 + 9 * (int(level) - 1))) & 511)

    @classmethod
    def _from_indices(cls, size: type[PageSize], *indices: PageTableIndex) -> Any:
        if cls.SIZE_TYPE is not size:
            raise TypeError(f"this constructor builds {size.DEBUG_STR} pages, not {cls.__name__}")
        v = 0
        top = 12 + 9 * (cls._LEVELS - 1)
        for shift, index in zip(range(top, 11, -9), indices, strict=False):
            v |= int(index) << shift
        return cls._make(canonicalize(v, cls._LEVELS))

    @classmethod
    def from_page_table_indices(
        cls, p4: PageTableIndex, p3: PageTableIndex, p2: PageTableIndex, p1: PageTableIndex
    ) -> Page[Size4KiB]:
        """The 4 KiB page with these indices; p4 >= 256 gives an upper-half page (P-08)."""
        return cls._from_indices(Size4KiB, p4, p3, p2, p1)  # type: ignore[no-any-return]

    @classmethod
    def from_page_table_indices_2mib(
        cls, p4: PageTableIndex, p3: PageTableIndex, p2: PageTableIndex
    ) -> Page[Size2MiB]:
        """The 2 MiB page with these indices (call on ``Page[Size2MiB]``)."""
        return cls._from_indices(Size2MiB, p4, p3, p2)  # type: ignore[no-any-return]

    @classmethod
    def from_page_table_indices_1gib(cls, p4: PageTableIndex, p3: PageTableIndex) -> Page[Size1GiB]:
        """The 1 GiB page with these indices (call on ``Page[Size1GiB]``)."""
        return cls._from_indices(Size1GiB, p4, p3)  # type: ignore[no-any-return]

    # -- arithmetic (P-10): through VirtAddr, so never across the hole ------------------

    def __add__(self, n: int) -> Page[S]:
        if not isinstance(n, int):
            return NotImplemented
        return type(self).containing_address(self.start_address() + _bytes_of(n, self.SIZE))

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, _Unit):
            o = self._same(other)
            if o._start > self._start:
                raise Panic("attempt to subtract with overflow")
            return (self._start - o._start) // self.SIZE
        if not isinstance(other, int):
            return NotImplemented
        return type(self).containing_address(self.start_address().sub(_bytes_of(other, self.SIZE)))

    # -- Step (P-20): jumps the hole ----------------------------------------------------

    @staticmethod
    def forward_checked(start: Page[S], count: int) -> Page[S] | None:
        """``start`` moved up by ``count`` pages, skipping the hole; None past the top."""
        n = count * start.SIZE
        if n > U64_MAX:
            return None
        a = _VirtAddrBase.forward_checked(start.start_address(), n)
        return None if a is None else type(start).containing_address(a)

    @staticmethod
    def backward_checked(start: Page[S], count: int) -> Page[S] | None:
        """``start`` moved down by ``count`` pages, skipping the hole; None below 0."""
        n = count * start.SIZE
        if n > U64_MAX:
            return None
        a = _VirtAddrBase.backward_checked(start.start_address(), n)
        return None if a is None else type(start).containing_address(a)

    @staticmethod
    def steps_between(start: Page[S], end: Page[S]) -> tuple[int, int | None]:
        """Pages from ``start`` to ``end`` not counting the hole; ``(0, None)`` if reversed."""
        start._same(end)
        lo, hi = _VirtAddrBase.steps_between(start.start_address(), end.start_address())
        return (lo // start.SIZE, None if hi is None else hi // start.SIZE)

    # -- ranges (P-12) ------------------------------------------------------------------

    @staticmethod
    def range(start: Page[S], end: Page[S]) -> PageRange[S]:
        """Pages from ``start`` up to but not including ``end``."""
        return PageRange(start, end)

    @staticmethod
    def range_inclusive(start: Page[S], end: Page[S]) -> PageRangeInclusive[S]:
        """Pages from ``start`` up to and including ``end``."""
        return PageRangeInclusive(start, end)


# -- PhysFrame ----------------------------------------------------------------------------


class PhysFrame(_Unit[S]):
    """A physical memory frame of size ``S`` (4 KiB when written bare), P-21..P-22."""

    __slots__ = ()
    _KIND = "PhysFrame"
    _ADDR = PhysAddr

    @classmethod
    def from_start_address(cls, address: PhysAddr) -> PhysFrame[S]:
        """The frame starting at ``address``; `AddressNotAligned` unless it is aligned."""
        v = cls._addr_value(address)
        if v & (cls.SIZE - 1):
            raise AddressNotAligned(v, cls.SIZE)
        return cls._make(v)  # type: ignore[no-any-return]

    @classmethod
    def from_start_address_unchecked(cls, address: PhysAddr) -> PhysFrame[S]:
        """The frame at ``address`` without the alignment check."""
        return cls._make(cls._addr_value(address))  # type: ignore[no-any-return]

    @classmethod
    def containing_address(cls, address: PhysAddr) -> PhysFrame[S]:
        """The frame that contains ``address``."""
        return cls._make(cls._addr_value(address) & ~(cls.SIZE - 1))  # type: ignore[no-any-return]

    def start_address(self) -> PhysAddr:
        """The first address of the frame."""
        return PhysAddr._raw(self._start)

    def __add__(self, n: int) -> PhysFrame[S]:
        if not isinstance(n, int):
            return NotImplemented
        return type(self).containing_address(self.start_address() + _bytes_of(n, self.SIZE))

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, _Unit):
            o = self._same(other)
            # (PhysAddr - PhysAddr) / SIZE: PhysAddr's checked_sub().unwrap() panic (P-22)
            return self.start_address().sub_addr(PhysAddr._raw(o._start)) // self.SIZE
        if not isinstance(other, int):
            return NotImplemented
        return type(self).containing_address(self.start_address().sub(_bytes_of(other, self.SIZE)))

    @staticmethod
    def range(start: PhysFrame[S], end: PhysFrame[S]) -> PhysFrameRange[S]:
        """Frames from ``start`` up to but not including ``end``."""
        return PhysFrameRange(start, end)

    @staticmethod
    def range_inclusive(start: PhysFrame[S], end: PhysFrame[S]) -> PhysFrameRangeInclusive[S]:
        """Frames from ``start`` up to and including ``end``."""
        return PhysFrameRangeInclusive(start, end)


_LAST_VIRT_PAGE = {size: U64_MAX - (size.SIZE - 1) for size in PAGE_SIZES}

for _base in (Page, PhysFrame):
    _base._SPECIALISED = {Size4KiB: _base}
    for _size in (Size2MiB, Size1GiB):
        _base._SPECIALISED[_size] = _specialise(_base, _size)


# -- ranges (P-12..P-19, P-23, P-24) -------------------------------------------------------

U = TypeVar("U", bound="_Unit[Any]")


class _Range(Generic[U]):
    """Shared shape of the four range types: public ``start`` / ``end``, ``len``, ``size``."""

    __slots__ = ("end", "start")
    _INCLUSIVE: ClassVar[bool]

    def __init__(self, start: U, end: U) -> None:
        start._same(end)
        self.start = start
        self.end = end

    def is_empty(self) -> bool:
        """Exclusive: ``start >= end``; inclusive: ``start > end``."""
        if self._INCLUSIVE:
            return self.start._start > self.end._start
        return self.start._start >= self.end._start

    def len(self) -> int:
        """Number of units; 0 for an empty or reversed range (P-13, P-14)."""
        if self.is_empty():
            return 0
        n = (self.end._start - self.start._start) // self.start.SIZE
        return n + 1 if self._INCLUSIVE else n

    def __len__(self) -> int:
        return self.len()

    def size(self) -> int:
        """Bytes covered: ``SIZE * len()``."""
        return self.start.SIZE * self.len()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.start == self.start and other.end == self.end

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.start, self.end))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {{ start: {self.start!r}, end: {self.end!r} }}"


class PageRange(_Range[Page[S]]):
    """Pages ``start <= p < end``. Iterating across the canonical hole panics (P-17)."""

    __slots__ = ()
    _INCLUSIVE = False

    def __iter__(self) -> Iterator[Page[S]]:
        start, end = self.start, self.end
        while start._start < end._start:
            page = start
            start = start + 1  # panics inside the step that would enter the hole, as the crate
            yield page

    def as_4kib_page_range(self) -> PageRange[Size4KiB]:
        """The same span as 4 KiB pages (P-18)."""
        page: Any = type(self.start)._SPECIALISED[Size4KiB]  # Page, or Page57 for 57-bit pages
        return PageRange(page._make(self.start._start), page._make(self.end._start))


class PageRangeInclusive(_Range[Page[S]]):
    """Pages ``start <= p <= end``; ending at the last page of the space terminates (P-16)."""

    __slots__ = ()
    _INCLUSIVE = True

    def __iter__(self) -> Iterator[Page[S]]:
        start, end = self.start, self.end
        last = _LAST_VIRT_PAGE[start.SIZE_TYPE]
        while start._start <= end._start:
            page = start
            if start._start < last:
                start = start + 1
            else:
                end = end - 1
            yield page


class PhysFrameRange(_Range[PhysFrame[S]]):
    """Frames ``start <= f < end``."""

    __slots__ = ()
    _INCLUSIVE = False

    def __iter__(self) -> Iterator[PhysFrame[S]]:
        start, end = self.start, self.end
        while start._start < end._start:
            frame = start
            start = start + 1
            yield frame


class PhysFrameRangeInclusive(_Range[PhysFrame[S]]):
    """Frames ``start <= f <= end``. No top-of-space guard, like the crate (P-24)."""

    __slots__ = ()
    _INCLUSIVE = True

    def __iter__(self) -> Iterator[PhysFrame[S]]:
        start, end = self.start, self.end
        while start._start <= end._start:
            frame = start
            start = start + 1  # panics at 2**52, before yielding the last frame (P-24)
            yield frame
