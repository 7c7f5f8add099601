"""Checklist section 2 (``page.rs``, ``frame.rs``): rules P-01..P-25 and the upstream unit tests
of 6.2 and 6.3. Every test cites the rule it pins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from support import frame4k, frame_type, page1g, page2m, page4k, page_type

from kvmpage import Panic, PhysAddr, VirtAddr
from kvmpage.index import PageTableIndex, PageTableLevel
from kvmpage.paging import (
    PAGE_SIZES,
    AddressNotAligned,
    Page,
    PageRange,
    PageRangeInclusive,
    PageSize,
    PhysFrame,
    PhysFrameRange,
    PhysFrameRangeInclusive,
    Size1GiB,
    Size2MiB,
    Size4KiB,
)

U64_MAX = (1 << 64) - 1
KIB4, MIB2, GIB1 = 0x1000, 0x20_0000, 0x4000_0000
SIZES: list[tuple[type[PageSize], int, str]] = [
    (Size4KiB, KIB4, "4KiB"),
    (Size2MiB, MIB2, "2MiB"),
    (Size1GiB, GIB1, "1GiB"),
]

NOT_APPLICABLE = {
    "P-03": "a sealed trait has no Python equivalent; instead the three sizes refuse "
    "instantiation and Page[...] / PhysFrame[...] accept only them (test_p03_*).",
}


def assert_panics(prefix: str, fn: Callable[..., object], *args: object) -> Panic:
    """Call ``fn(*args)``; it must raise `Panic` whose message starts with ``prefix``."""
    with pytest.raises(Panic) as info:
        fn(*args)
    assert str(info.value).startswith(prefix), str(info.value)
    return info.value


def page(addr: int, size: type[PageSize] = Size4KiB) -> Page[Any]:
    return page_type(size).containing_address(VirtAddr(addr))


def frame(addr: int, size: type[PageSize] = Size4KiB) -> PhysFrame[Any]:
    return frame_type(size).containing_address(PhysAddr(addr))


def starts(it: Iterable[Page[Any]]) -> list[int]:
    return [p.start_address().as_u64() for p in it]


# -- 2.1 PageSize ---------------------------------------------------------------------------


@pytest.mark.parametrize("size, nbytes, debug", SIZES)
def test_p01_page_size_constants(size: type[PageSize], nbytes: int, debug: str) -> None:
    """P-01: SIZE and DEBUG_STR of the three sizes."""
    assert nbytes == size.SIZE
    assert debug == size.DEBUG_STR
    assert issubclass(size, PageSize)
    assert (Size4KiB, Size2MiB, Size1GiB) == PAGE_SIZES
    assert Size2MiB.SIZE == 4096 * 512 and Size1GiB.SIZE == 4096 * 512 * 512


def test_p02_not_giant_page_size_gates_p2_and_p1_index() -> None:
    """P-02: p2_index only for 4KiB/2MiB pages; p1_index only for 4KiB (NotGiantPageSize)."""
    assert int(page(0x40_0000, Size2MiB).p2_index()) == 2
    assert int(page(0x40_1000).p2_index()) == 2
    assert int(page(0x40_1000).p1_index()) == 1
    with pytest.raises(TypeError):
        page(0x4000_0000, Size1GiB).p2_index()
    with pytest.raises(TypeError):
        page(0x40_0000, Size2MiB).p1_index()
    with pytest.raises(TypeError):
        page(0x4000_0000, Size1GiB).p1_index()


@pytest.mark.parametrize("size", [PageSize, Size4KiB, Size2MiB, Size1GiB])
def test_p03_sizes_cannot_be_instantiated(size: type[PageSize]) -> None:
    """P-03: the size types are uninhabited (here: instantiation is a TypeError)."""
    with pytest.raises(TypeError):
        size()


@pytest.mark.parametrize("generic", [Page, PhysFrame])
def test_p03_sizes_are_sealed(generic: type[Page[Any]] | type[PhysFrame[Any]]) -> None:
    """P-03: users cannot add sizes: Page[...] / PhysFrame[...] accept only the three sizes."""

    class Size8KiB(PageSize):
        SIZE = 8192
        DEBUG_STR = "8KiB"

    for bad in (Size8KiB, PageSize, int, 4096, "4KiB", None):
        with pytest.raises(TypeError):
            generic[bad]  # type: ignore[index]  # not a page size, on purpose


def test_p03_pages_are_not_built_with_the_constructor() -> None:
    """P-03 (and P-05/P-06): a page/frame only comes from the crate's constructors."""
    with pytest.raises(TypeError):
        Page(VirtAddr(0x1000))
    with pytest.raises(TypeError):
        PhysFrame(PhysAddr(0x1000))


# -- 2.2 Page ----------------------------------------------------------------------------------


def test_sized_types_identity() -> None:
    """Page[Size4KiB] is Page and PhysFrame[Size4KiB] is PhysFrame; the others are subclasses."""
    assert Page[Size4KiB] is Page
    assert PhysFrame[Size4KiB] is PhysFrame
    assert Page[Size2MiB] is Page[Size2MiB]
    assert Page[Size2MiB] is not Page and issubclass(Page[Size2MiB], Page)
    assert issubclass(PhysFrame[Size1GiB], PhysFrame)
    assert type(page(0x1000)) is Page
    assert type(page(0x20_0000, Size2MiB)) is Page[Size2MiB]
    assert page(0x4000_0000, Size1GiB).SIZE_TYPE is Size1GiB


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p04_size_const_and_method(size: type[PageSize], nbytes: int, _: str) -> None:
    """P-04: Page::<S>::SIZE == S::SIZE and size() returns the same (also for frames)."""
    assert nbytes == page_type(size).SIZE
    assert page_type(size).size() == nbytes
    assert page(0, size).size() == nbytes
    assert nbytes == frame_type(size).SIZE
    assert frame(0, size).size() == nbytes


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p05_from_start_address(size: type[PageSize], nbytes: int, _: str) -> None:
    """P-05: AddressNotAligned unless the address is SIZE-aligned."""
    assert page_type(size).from_start_address(VirtAddr(nbytes * 3)).start_address() == VirtAddr(
        nbytes * 3
    )
    for bad in (nbytes * 3 + 0x1000 if nbytes > KIB4 else nbytes * 3 + 8, 1):
        with pytest.raises(AddressNotAligned) as info:
            page_type(size).from_start_address(VirtAddr(bad))
        assert info.value.addr == bad


def test_p05_address_not_aligned_display_and_debug() -> None:
    """P-05: Display ``the given address was not sufficiently aligned``; Debug is the unit name."""
    e = AddressNotAligned()
    assert str(e) == "the given address was not sufficiently aligned"
    assert repr(e) == "AddressNotAligned"
    assert not isinstance(e, Panic)


def test_p06_unchecked_and_containing_address() -> None:
    """P-06: from_start_address_unchecked does no check; containing_address aligns down."""
    assert Page.from_start_address_unchecked(VirtAddr(0x1234)).start_address() == VirtAddr(0x1234)
    assert page(0x1234).start_address() == VirtAddr(0x1000)
    assert page(0x3F_FFFF, Size2MiB).start_address() == VirtAddr(0x20_0000)
    assert page(0xFFFF_FFFF_FFFF_FFFF, Size1GiB).start_address() == VirtAddr(0xFFFF_FFFF_C000_0000)
    assert page(0xFFFF_8000_0000_0FFF).start_address() == VirtAddr(0xFFFF_8000_0000_0000)


def test_p07_index_accessors() -> None:
    """P-07: p4/p3 for all sizes, p2 for 4KiB/2MiB, p1 for 4KiB (octal vector of Appendix B)."""
    addr = 0o123_456_701_234_0000
    p = page(addr)
    assert [int(i) for i in (p.p4_index(), p.p3_index(), p.p2_index(), p.p1_index())] == [
        0o123,
        0o456,
        0o701,
        0o234,
    ]
    p2 = page(addr, Size2MiB)
    assert [int(i) for i in (p2.p4_index(), p2.p3_index(), p2.p2_index())] == [0o123, 0o456, 0o701]
    p1g = page(addr, Size1GiB)
    assert [int(i) for i in (p1g.p4_index(), p1g.p3_index())] == [0o123, 0o456]
    assert all(isinstance(i, PageTableIndex) for i in (p.p1_index(), p2.p2_index()))


def test_p07_page_table_index_all_levels() -> None:
    """P-07: page_table_index works for every size and level; below a 1GiB page's level it is 0."""
    p1g = page(0o123_456_701_234_0000, Size1GiB)
    L = PageTableLevel
    assert [int(p1g.page_table_index(lv)) for lv in (L.One, L.Two, L.Three, L.Four)] == [
        0,
        0,
        0o456,
        0o123,
    ]
    p2m = page(0o123_456_701_234_0000, Size2MiB)
    assert int(p2m.page_table_index(L.One)) == 0
    assert int(p2m.page_table_index(L.Two)) == 0o701
    p = page(0o123_456_701_234_0000)
    for lv, acc in (
        (L.One, p.p1_index),
        (L.Two, p.p2_index),
        (L.Three, p.p3_index),
        (L.Four, p.p4_index),
    ):
        assert p.page_table_index(lv) == acc()


@pytest.mark.parametrize(
    "indices, expected",
    [
        ((256, 0, 0, 1), 0xFFFF_8000_0000_1000),
        ((0, 0, 0, 1), 0x1000),
        ((511, 511, 511, 511), 0xFFFF_FFFF_FFFF_F000),
        ((255, 511, 511, 511), 0x7FFF_FFFF_F000),
        ((0o123, 0o456, 0o701, 0o234), 0o123_456_701_234_0000),
    ],
)
def test_p08_from_page_table_indices(indices: tuple[int, int, int, int], expected: int) -> None:
    """P-08 (PR #398): indices OR'ed at bits 39/30/21/12 then sign-extended."""
    idx = [PageTableIndex(i) for i in indices]
    p = Page.from_page_table_indices(*idx)
    assert type(p) is Page
    assert p.start_address().as_u64() == expected
    assert (int(p.p4_index()), int(p.p3_index()), int(p.p2_index()), int(p.p1_index())) == indices


def test_p08_from_page_table_indices_huge() -> None:
    """P-08: the 2MiB and 1GiB variants (called on the sized type); wrong type is a TypeError."""
    i = PageTableIndex
    p2 = Page[Size2MiB].from_page_table_indices_2mib(i(256), i(1), i(2))
    assert type(p2) is Page[Size2MiB]
    assert p2.start_address().as_u64() == 0xFFFF_8000_4040_0000
    p1 = Page[Size1GiB].from_page_table_indices_1gib(i(511), i(511))
    assert type(p1) is Page[Size1GiB]
    assert p1.start_address().as_u64() == 0xFFFF_FFFF_C000_0000
    with pytest.raises(TypeError):
        Page.from_page_table_indices_2mib(i(0), i(0), i(0))
    with pytest.raises(TypeError):
        Page[Size2MiB].from_page_table_indices(i(0), i(0), i(0), i(0))
    with pytest.raises(TypeError):
        Page.from_page_table_indices_1gib(i(0), i(0))


@pytest.mark.parametrize(
    "obj, text",
    [
        (lambda: page(0x1000), "Page[4KiB](0x1000)"),
        (lambda: page(0x4000_0000, Size1GiB), "Page[1GiB](0x40000000)"),
        (lambda: page(0x20_0000, Size2MiB), "Page[2MiB](0x200000)"),
        (lambda: page(0), "Page[4KiB](0x0)"),
        (lambda: page(0xFFFF_8000_0000_0000), "Page[4KiB](0xffff800000000000)"),
    ],
)
def test_p09_debug(obj: Callable[[], Page[Any]], text: str) -> None:
    """P-09: Debug shows the size and the start address in {:#x}."""
    assert repr(obj()) == text


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p10_page_arithmetic(size: type[PageSize], nbytes: int, _: str) -> None:
    """P-10: page + n / page - n / page - page, through VirtAddr arithmetic."""
    p = page(nbytes * 4, size)
    assert p + 3 == page(nbytes * 7, size)
    assert p - 3 == page(nbytes, size)
    assert (p + 3) - p == 3
    assert p - p == 0
    q = p
    q += 2
    q -= 1
    assert q == page(nbytes * 5, size)
    assert type(p + 1) is page_type(size)
    assert_panics("attempt to subtract with overflow", p.__sub__, p + 1)
    assert_panics("attempt to subtract with overflow", page(0, size).__sub__, 1)


def test_p10_page_arithmetic_never_jumps_the_hole() -> None:
    """P-10: the last lower-half page + 1 panics (non-canonical); the last page + 1 overflows."""
    assert_panics(
        "attempt to add resulted in non-canonical virtual address",
        page(0x7FFF_FFFF_F000).__add__,
        1,
    )
    assert_panics(
        "attempt to subtract resulted in non-canonical virtual address",
        page(0xFFFF_8000_0000_0000).__sub__,
        1,
    )
    assert_panics("attempt to add with overflow", page(0xFFFF_FFFF_FFFF_F000).__add__, 1)
    assert_panics(
        "attempt to add resulted in non-canonical virtual address",
        page(0x7FFF_C000_0000, Size1GiB).__add__,
        1,
    )
    # the difference of two pages across the hole counts the hole
    assert page(0xFFFF_8000_0000_0000) - page(0x7FFF_FFFF_F000) == 0xF_FFF0_0000_0001


def test_p10_page_count_times_size_overflow_panics() -> None:
    """P-10: n * SIZE is a u64 multiply that panics on overflow (debug build semantics)."""
    assert_panics("attempt to multiply with overflow", page(0).__add__, 1 << 52)
    assert_panics("attempt to multiply with overflow", page(0, Size1GiB).__add__, 1 << 34)
    assert_panics("attempt to multiply with overflow", page(0xFFFF_8000_0000_0000).__sub__, 1 << 52)
    assert_panics("attempt to multiply with overflow", frame(0).__add__, 1 << 52)
    assert_panics("attempt to multiply with overflow", frame(0).__sub__, 1 << 52)


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p11_ordering_equality_hash(size: type[PageSize], nbytes: int, _: str) -> None:
    """P-11 / 6.2 test_page_is_hash: Eq/Ord/Hash from the start address, for all sizes."""
    a, b = page(nbytes, size), page(nbytes * 2, size)
    assert a < b and a <= b and b > a and b >= a and a != b
    assert a == page(nbytes, size)
    assert hash(a) == hash(page(nbytes, size))
    assert len({a, b, page(nbytes, size)}) == 2
    assert page(0xFFFF_8000_0000_0000, size) > page(0, size)
    f, g = frame(nbytes, size), frame(nbytes * 2, size)
    assert f < g and hash(f) == hash(frame(nbytes, size)) and len({f, g, f}) == 2


# -- sizes and kinds never mix --------------------------------------------------------------

MIXES = [
    (lambda: page(0), lambda: page(0, Size2MiB)),
    (lambda: page(0, Size2MiB), lambda: page(0, Size1GiB)),
    (lambda: frame(0), lambda: frame(0, Size1GiB)),
    (lambda: page(0), lambda: frame(0)),
    (lambda: page(0, Size2MiB), lambda: frame(0, Size2MiB)),
]


@pytest.mark.parametrize("mk_a, mk_b", MIXES)
def test_sizes_and_kinds_never_mix(
    mk_a: Callable[[], Page[Any] | PhysFrame[Any]], mk_b: Callable[[], Page[Any] | PhysFrame[Any]]
) -> None:
    """Pages and frames of different sizes (or a page and a frame) never mix: TypeError."""
    a, b = mk_a(), mk_b()
    assert a != b and b != a
    for op in (
        lambda: a < b,
        lambda: a <= b,
        lambda: a > b,
        lambda: a >= b,
        lambda: a - b,
        lambda: b - a,
    ):
        with pytest.raises(TypeError):
            op()
    for ctor in (PageRange, PageRangeInclusive, PhysFrameRange, PhysFrameRangeInclusive):
        with pytest.raises(TypeError):
            ctor(a, b)  # type: ignore[arg-type]  # mixed on purpose
    if isinstance(a, Page) and isinstance(b, Page):
        with pytest.raises(TypeError):
            Page.steps_between(a, b)
        with pytest.raises(TypeError):
            Page.range(a, b)
    with pytest.raises(TypeError):
        _ = a + 1.5  # type: ignore[operator]  # not an integer, on purpose


def test_address_kinds_never_mix() -> None:
    """Page constructors take a VirtAddr, frame constructors a PhysAddr; ints are refused."""
    # the wrong kinds of address, on purpose
    for not_virt in (PhysAddr(0x1000), 0x1000):
        with pytest.raises(TypeError):
            Page.containing_address(not_virt)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Page[Size2MiB].from_start_address(not_virt)  # type: ignore[arg-type]
    for not_phys in (VirtAddr(0x1000), 0x1000):
        with pytest.raises(TypeError):
            PhysFrame.containing_address(not_phys)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            PhysFrame[Size1GiB].from_start_address_unchecked(not_phys)  # type: ignore[arg-type]


# -- 2.3 page ranges ----------------------------------------------------------------------------


def test_p12_range_constructors_and_fields() -> None:
    """P-12: plain structs with public start/end; Page.range / Page.range_inclusive."""
    a, b = page(0x1000), page(0x5000)
    r = Page.range(a, b)
    assert isinstance(r, PageRange) and r.start == a and r.end == b
    ri = Page.range_inclusive(a, b)
    assert isinstance(ri, PageRangeInclusive) and ri.start == a and ri.end == b
    assert PageRange(a, b) == r
    assert PageRangeInclusive(a, b) == ri
    assert r != ri
    fr = PhysFrame.range(frame(0), frame(0x3000))
    assert isinstance(fr, PhysFrameRange) and fr.start == frame(0) and fr.end == frame(0x3000)
    fri = PhysFrame.range_inclusive(frame(0), frame(0x3000))
    assert isinstance(fri, PhysFrameRangeInclusive)


@pytest.mark.parametrize(
    "s, e, empty, n",
    [(0x1000, 0x5000, False, 4), (0x5000, 0x5000, True, 0), (0x6000, 0x1000, True, 0)],
)
def test_p13_exclusive_range_len_size_empty(s: int, e: int, empty: bool, n: int) -> None:
    """P-13: is_empty <=> start >= end; len = end - start or 0 (reversed: 0, no panic)."""
    r = Page.range(page(s), page(e))
    assert r.is_empty() is empty
    assert r.len() == n == len(r)
    assert r.size() == n * KIB4
    assert len(list(r)) == n


@pytest.mark.parametrize(
    "s, e, empty, n",
    [(0x1000, 0x5000, False, 5), (0x5000, 0x5000, False, 1), (0x6000, 0x1000, True, 0)],
)
def test_p14_inclusive_range_len_size_empty(s: int, e: int, empty: bool, n: int) -> None:
    """P-14: is_empty <=> start > end; len = end - start + 1 or 0."""
    r = Page.range_inclusive(page(s), page(e))
    assert r.is_empty() is empty
    assert r.len() == n == len(r)
    assert r.size() == n * KIB4
    assert len(list(r)) == n


def test_p13_p14_huge_range_size() -> None:
    """P-13/P-14: size = SIZE * len for huge pages too."""
    r = Page.range(page(0, Size1GiB), page(3 * GIB1, Size1GiB))
    assert r.len() == 3 and r.size() == 3 * GIB1
    ri = Page.range_inclusive(page(0, Size2MiB), page(3 * MIB2, Size2MiB))
    assert ri.len() == 4 and ri.size() == 4 * MIB2


def test_p15_p16_upstream_test_page_ranges() -> None:
    """P-15, P-16 / 6.2 test_page_ranges: 1000 pages from 0xdead_beaf, then None."""
    number = 1000
    start_addr = VirtAddr(0xDEAD_BEAF)
    start: Page[Size4KiB] = Page.containing_address(start_addr)
    end = start + number
    it = iter(Page.range(start, end))
    for i in range(number):
        assert next(it) == Page.containing_address(start_addr + KIB4 * i)
    assert next(it, None) is None
    it = iter(Page.range_inclusive(start, end))
    for i in range(number + 1):
        assert next(it) == Page.containing_address(start_addr + KIB4 * i)
    assert next(it, None) is None


def test_p16_upstream_test_page_range_inclusive_overflow() -> None:
    """P-16 / 6.2 test_page_range_inclusive_overflow: the last 1001 pages of the space."""
    number = 1000
    start_addr = VirtAddr(0xFFFF_FFFF_FFFF_FFFF - number * KIB4)
    start: Page[Size4KiB] = Page.containing_address(start_addr)
    end = start + number
    assert end == page(0xFFFF_FFFF_FFFF_F000)
    it = iter(Page.range_inclusive(start, end))
    for i in range(number + 1):
        assert next(it) == Page.containing_address(start_addr + KIB4 * i)
    assert next(it, None) is None


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p16_inclusive_range_ending_at_last_page_terminates(
    size: type[PageSize], nbytes: int, _: str
) -> None:
    """P-16 (issue #346 / PR #351): a range ending at the very last page stops without panic."""
    last = U64_MAX - (nbytes - 1)
    r = Page.range_inclusive(page(last - 2 * nbytes, size), page(last, size))
    assert starts(r) == [last - 2 * nbytes, last - nbytes, last]
    assert starts(Page.range_inclusive(page(last, size), page(last, size))) == [last]
    # iterating does not consume the range (a Rust for-loop iterates a copy)
    assert r.len() == 3 and len(list(r)) == 3


def test_p15_exclusive_range_to_last_page() -> None:
    """P-15: the exclusive range never steps past end, so it can end at the last page."""
    last = 0xFFFF_FFFF_FFFF_F000
    assert starts(Page.range(page(last - 0x2000), page(last))) == [last - 0x2000, last - 0x1000]


@pytest.mark.parametrize("ctor", [Page.range, Page.range_inclusive])
def test_p17_ranges_cannot_be_iterated_across_the_hole(
    ctor: Callable[[Page[Any], Page[Any]], PageRange[Any] | PageRangeInclusive[Any]],
) -> None:
    """P-17: next() steps with Page + 1, which panics at the hole before anything is yielded."""
    r = ctor(page(0x7FFF_FFFF_F000), page(0xFFFF_8000_0000_1000))
    it = iter(r)
    assert_panics("attempt to add resulted in non-canonical virtual address", next, it)


def test_p17_len_counts_the_hole_and_later_pages_iterate() -> None:
    """P-17: len() of a range across the hole counts the hole; the page before it iterates."""
    r = Page.range(page(0x7FFF_FFFF_F000), page(0xFFFF_8000_0000_1000))
    assert r.len() == 0xF_FFF0_0000_0002
    it = iter(Page.range(page(0x7FFF_FFFF_E000), page(0xFFFF_8000_0000_0000)))
    assert next(it) == page(0x7FFF_FFFF_E000)
    assert_panics("attempt to add resulted in non-canonical", next, it)


def test_p17_step_does_jump_the_hole() -> None:
    """P-17: Step for Page jumps the hole where ranges cannot."""
    assert Page.forward_checked(page(0x7FFF_FFFF_F000), 1) == page(0xFFFF_8000_0000_0000)


def test_p18_as_4kib_page_range() -> None:
    """P-18: a 2MiB page range re-expressed as 4KiB pages (512x len)."""
    r = Page.range(page(MIB2, Size2MiB), page(3 * MIB2, Size2MiB))
    r4 = r.as_4kib_page_range()
    assert isinstance(r4, PageRange)
    assert r4.start == page(MIB2) and r4.end == page(3 * MIB2)
    assert type(r4.start) is Page
    assert r4.len() == 512 * r.len() == 1024
    assert r4.size() == r.size()


def test_p19_range_debug() -> None:
    """P-19: Debug of the two page range types."""
    assert repr(Page.range(page(0), page(0x1000))) == (
        "PageRange { start: Page[4KiB](0x0), end: Page[4KiB](0x1000) }"
    )
    assert repr(Page.range_inclusive(page(0), page(0x1000))) == (
        "PageRangeInclusive { start: Page[4KiB](0x0), end: Page[4KiB](0x1000) }"
    )
    assert repr(PhysFrame.range(frame(0), frame(0x1000))) == (
        "PhysFrameRange { start: PhysFrame[4KiB](0x0), end: PhysFrame[4KiB](0x1000) }"
    )
    assert repr(PhysFrame.range_inclusive(frame(0, Size2MiB), frame(MIB2, Size2MiB))) == (
        "PhysFrameRangeInclusive { start: PhysFrame[2MiB](0x0), end: PhysFrame[2MiB](0x200000) }"
    )


# -- P-20 Step for Page ---------------------------------------------------------------------------

PAGE_FORWARD = [
    # 6.2 page_step_forward
    (0, 0, 0),
    (0, 1, 0x1000),
    (0x7FFF_FFFF_F000, 1, 0xFFFF_8000_0000_0000),
    (0xFFFF_FFFF_FFFF_F000, 1, None),
    (0x7FFF_FFFF_F000, 0x1_2345_6789, 0xFFFF_9234_5678_8000),
    (0x7FFF_FFFF_F000, 0x8_0000_0000, 0xFFFF_FFFF_FFFF_F000),
    (0x7FFF_FFF0_0000, 0x8_0000_00FF, 0xFFFF_FFFF_FFFF_F000),
    (0x7FFF_FFF0_0000, 0x8_0000_0100, None),
    (0x7FFF_FFFF_F000, 0x8_0000_0001, None),
    (0, 0x10_0000, 0x1_0000_0000),
    # more: count * SIZE overflowing u64 is None, not a panic
    (0, 1 << 52, None),
    (0, U64_MAX, None),
]


@pytest.mark.parametrize("start, n, expected", PAGE_FORWARD)
def test_p20_page_forward_checked(start: int, n: int, expected: int | None) -> None:
    """P-20 / 6.2 page_step_forward."""
    r = Page.forward_checked(page(start), n)
    assert (None if r is None else r.start_address().as_u64()) == expected
    if r is not None:
        assert type(r) is Page


PAGE_BACKWARD = [
    # 6.2 page_step_backwards
    (0, 0, 0),
    (0, 1, None),
    (0x1000, 1, 0),
    (0xFFFF_8000_0000_0000, 1, 0x7FFF_FFFF_F000),
    (0xFFFF_8000_0000_0000, 0x7_FFFF_FF01, 0xFF000),
    (0xFFFF_8000_0000_0000, 0x8_0000_0001, None),
    # more
    (0xFFFF_8000_0000_0000, 0x8_0000_0000, 0),
    (0xFFFF_8000_0000_0000, 1 << 52, None),
]


@pytest.mark.parametrize("start, n, expected", PAGE_BACKWARD)
def test_p20_page_backward_checked(start: int, n: int, expected: int | None) -> None:
    """P-20 / 6.2 page_step_backwards."""
    r = Page.backward_checked(page(start), n)
    assert (None if r is None else r.start_address().as_u64()) == expected


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # 6.2 page_steps_between
        (0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000, (1, 1)),
        (0, 0x1000_0000_0000, (0x1_0000_0000, 0x1_0000_0000)),
        # more
        (0, 0, (0, 0)),
        (0x1000, 0, (0, None)),
        (0xFFFF_8000_0000_0000, 0x7FFF_FFFF_F000, (0, None)),
    ],
)
def test_p20_page_steps_between(a: int, b: int, expected: tuple[int, int | None]) -> None:
    """P-20 / 6.2 page_steps_between: VirtAddr steps / SIZE."""
    assert Page.steps_between(page(a), page(b)) == expected


def test_p20_step_for_huge_pages() -> None:
    """P-20: the count is multiplied by SIZE, so huge pages step by their own size."""
    p = page(0x7FFF_C000_0000, Size1GiB)
    assert Page.forward_checked(p, 1) == page(0xFFFF_8000_0000_0000, Size1GiB)
    assert Page.backward_checked(page(0xFFFF_8000_0000_0000, Size1GiB), 1) == p
    assert Page.steps_between(p, page(0xFFFF_8000_4000_0000, Size1GiB)) == (2, 2)
    p2 = page(0x7FFF_FFE0_0000, Size2MiB)
    r = Page.forward_checked(p2, 2)
    assert r == page(0xFFFF_8000_0020_0000, Size2MiB)
    assert type(r) is Page[Size2MiB]


# -- 2.4 PhysFrame ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size, nbytes, _", SIZES)
def test_p21_phys_frame_constructors(size: type[PageSize], nbytes: int, _: str) -> None:
    """P-21: from_start_address (AddressNotAligned), unchecked, containing_address, size()."""
    F = frame_type(size)
    f = F.from_start_address(PhysAddr(nbytes * 5))
    assert f.start_address() == PhysAddr(nbytes * 5)
    assert isinstance(f.start_address(), PhysAddr)
    with pytest.raises(AddressNotAligned):
        F.from_start_address(PhysAddr(nbytes * 5 + 0x800))
    assert F.from_start_address_unchecked(PhysAddr(0x1234)).start_address() == PhysAddr(0x1234)
    assert F.containing_address(PhysAddr(nbytes * 5 + 7)) == f
    assert f.size() == nbytes == F.SIZE


def test_p21_phys_frame_has_no_indices_or_step() -> None:
    """P-21: no p1..p4 accessors, no from_page_table_indices, no Step on PhysFrame."""
    for name in (
        "p1_index",
        "p2_index",
        "p3_index",
        "p4_index",
        "page_table_index",
        "from_page_table_indices",
        "from_page_table_indices_2mib",
        "from_page_table_indices_1gib",
        "forward_checked",
        "backward_checked",
        "steps_between",
    ):
        assert not hasattr(PhysFrame, name), name
        assert not hasattr(PhysFrame[Size2MiB], name), name
        assert hasattr(Page, name), name


def test_p22_phys_frame_debug_and_arithmetic() -> None:
    """P-22: Debug ``PhysFrame[4KiB](0x2000)``; arithmetic follows PhysAddr rules (52 bits)."""
    assert repr(frame(0x2000)) == "PhysFrame[4KiB](0x2000)"
    assert repr(frame(GIB1, Size1GiB)) == "PhysFrame[1GiB](0x40000000)"
    f = frame(0x2000)
    assert f + 2 == frame(0x4000)
    assert f - 2 == frame(0)
    assert frame(0x5000) - f == 3
    g = f
    g += 1
    assert g == frame(0x3000)
    last = frame((1 << 52) - KIB4)
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set", last.__add__, 1
    )
    unwrap = "called `Option::unwrap()` on a `None` value"
    assert_panics(unwrap, frame(0).__sub__, 1)
    # PhysFrame - PhysFrame is (PhysAddr - PhysAddr) / SIZE: PhysAddr's unwrap panic
    assert_panics(unwrap, frame(0).__sub__, frame(0x1000))


@pytest.mark.parametrize(
    "ctor, s, e, empty, n",
    [
        (PhysFrame.range, 0x1000, 0x5000, False, 4),
        (PhysFrame.range, 0x5000, 0x5000, True, 0),
        (PhysFrame.range, 0x6000, 0x1000, True, 0),
        (PhysFrame.range_inclusive, 0x1000, 0x5000, False, 5),
        (PhysFrame.range_inclusive, 0x5000, 0x5000, False, 1),
        (PhysFrame.range_inclusive, 0x6000, 0x1000, True, 0),
    ],
)
def test_p23_frame_range_formulas(
    ctor: Callable[
        [PhysFrame[Any], PhysFrame[Any]], PhysFrameRange[Any] | PhysFrameRangeInclusive[Any]
    ],
    s: int,
    e: int,
    empty: bool,
    n: int,
) -> None:
    """P-23: frame ranges use the page-range is_empty/len/size formulas."""
    r = ctor(frame(s), frame(e))
    assert r.is_empty() is empty
    assert r.len() == n == len(r) == len(list(r))
    assert r.size() == n * KIB4
    assert [f.start_address().as_u64() for f in r] == [s + KIB4 * i for i in range(n)]


def test_p24_frame_range_inclusive_has_no_top_guard() -> None:
    """P-24: PhysFrameRangeInclusive increments start past the last frame below 2^52 and
    panics (PhysAddr::new of 2^52) inside the next() that would yield that last frame."""
    last = frame((1 << 52) - KIB4)
    it = iter(PhysFrame.range_inclusive(last - 1, last))
    assert next(it) == last - 1
    assert_panics("physical addresses must not have any bits in the range 52 to 64 set", next, it)
    assert_panics(
        "physical addresses must not have any bits", list, PhysFrame.range_inclusive(last, last)
    )
    # the exclusive range never increments past end
    assert list(PhysFrame.range(last - 2, last)) == [last - 2, last - 1]
    # a 1 GiB inclusive range ending at the top panics the same way
    top = frame((1 << 52) - GIB1, Size1GiB)
    with pytest.raises(Panic):
        list(PhysFrame.range_inclusive(top, top))


def test_p25_upstream_test_frame_range_len() -> None:
    """P-25 / 6.3 test_frame_range_len: frame containing 0xdead_beaf, +50 -> len 50 / 51."""
    start: PhysFrame[Size4KiB] = PhysFrame.containing_address(PhysAddr(0xDEAD_BEAF))
    end = start + 50
    assert PhysFrameRange(start, end).len() == 50
    assert PhysFrameRangeInclusive(start, end).len() == 51


def test_upstream_test_page_range_len() -> None:
    """P-13, P-14 / 6.2 test_page_range_len: page containing 0xdead_beaf, +50 -> 50 / 51."""
    start: Page[Size4KiB] = Page.containing_address(VirtAddr(0xDEAD_BEAF))
    end = start + 50
    assert PageRange(start, end).len() == 50
    assert PageRangeInclusive(start, end).len() == 51


def test_p16_inclusive_iteration_with_2mib_pages_at_top() -> None:
    """P-16: the top-of-space guard uses the page size (0xffff_ffff_ffe0_0000 for 2MiB)."""
    last = 0xFFFF_FFFF_FFE0_0000
    r = Page.range_inclusive(page(last - MIB2, Size2MiB), page(last, Size2MiB))
    assert starts(r) == [last - MIB2, last]


# -- cases from the crate's issues (checklist section 7, I-ids; the rest: test_mapper.py) ----------


def test_i22_from_page_table_indices_sign_extends() -> None:
    """I-22 (#398) / P-08: (256, 0, 0, 1) is the upper-half page 0xffff_8000_0000_1000."""
    i = PageTableIndex
    assert Page.from_page_table_indices(i(256), i(0), i(0), i(1)) == page4k(0xFFFF_8000_0000_1000)
    assert Page[Size2MiB].from_page_table_indices_2mib(i(511), i(511), i(511)) == page2m(
        0xFFFF_FFFF_FFE0_0000
    )
    assert Page[Size1GiB].from_page_table_indices_1gib(i(256), i(1)) == page1g(
        0xFFFF_8000_4000_0000
    )


def test_i23_inclusive_range_at_top_terminates_frame_range_does_not() -> None:
    """I-23 (#346 -> #351) / P-16 / P-24: a PageRangeInclusive ending at the last page of the
    space terminates; PhysFrameRangeInclusive has no such guard and panics at 2**52."""
    top = Page[Size1GiB].containing_address(VirtAddr(0xFFFF_FFFF_C000_0000))
    rng = Page[Size1GiB].range_inclusive(top - 1, top)
    assert list(rng) == [top - 1, top]
    last4k = page4k(0xFFFF_FFFF_FFFF_F000)
    assert list(Page.range_inclusive(last4k, last4k)) == [last4k]
    last_frame = frame4k(0xF_FFFF_FFFF_F000)
    it = iter(PhysFrame.range_inclusive(last_frame, last_frame))
    with pytest.raises(Panic, match=r"^physical addresses must not have any bits"):
        next(it)


def test_i25_range_len_size_and_page_hash() -> None:
    """I-25 (#491, #490, #489): len/size of empty or reversed ranges are 0; Page is hashable."""
    a, b = page4k(0x5000), page4k(0x1000)
    assert Page.range(a, b).len() == 0 and Page.range(a, b).size() == 0
    assert Page.range_inclusive(a, b).len() == 0
    assert Page.range(b, a).len() == 4 and Page.range_inclusive(b, a).size() == 5 * 0x1000
    fr = PhysFrame.range(frame4k(0x1000), frame4k(0x3000))
    assert fr.len() == 2 and fr.size() == 0x2000
    assert len({page4k(0x1000), page4k(0x1000), page2m(0)}) == 2
