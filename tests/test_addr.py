"""Checklist section 1 (``addr.rs``): rules A-01..A-31 and the upstream unit tests of 6.1.

Every test cites the rule it pins. Rules that have no Python counterpart are listed in
`NOT_APPLICABLE` with the reason, and each still has a small test asserting the Python side of
that reason, so a grep for the id finds both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import page4k

import kvmpage
from kvmpage import (
    Panic,
    PhysAddr,
    PhysAddrNotValid,
    VirtAddr,
    VirtAddrNotValid,
    align_down,
    align_up,
)
from kvmpage.index import PageOffset, PageTableIndex, PageTableLevel
from kvmpage.paging import Page, PageTableFlags, PhysFrame

U64_MAX = (1 << 64) - 1

NOT_APPLICABLE = {
    "A-06": "from_ptr / as_ptr / as_mut_ptr: Python has no raw pointers; the canonical check "
    "from_ptr goes through is VirtAddr(int) (A-03), tested there.",
    "A-25": "Kani proof harnesses are not unit tests; their five properties are checked here "
    "with hypothesis instead (test_a25_*).",
    "A-31": "memory_encryption (SEV/TDX C-bit) is not modelled: there is no "
    "enable_memory_encryption and no ENCRYPTED flag; PhysAddr keeps the plain 52-bit rule.",
}

canonical = st.one_of(
    st.integers(0, (1 << 47) - 1),
    st.integers(0xFFFF_8000_0000_0000, U64_MAX),
)
u64 = st.integers(0, U64_MAX)


def assert_panics(prefix: str, fn: Callable[..., object], *args: object) -> Panic:
    """Call ``fn(*args)``; it must raise `Panic` whose message starts with ``prefix``."""
    with pytest.raises(Panic) as info:
        fn(*args)
    assert str(info.value).startswith(prefix), str(info.value)
    return info.value


def V(x: int) -> VirtAddr:
    return VirtAddr(x)


def is_canonical(x: int) -> bool:
    top = x >> 47
    return top in (0, 0x1FFFF)


# -- 1.1 construction ---------------------------------------------------------------------


@given(u64)
def test_a01_canonical_iff_bits_48_to_63_copy_bit_47(x: int) -> None:
    """A-01: a VirtAddr exists (try_new succeeds) exactly for canonical values."""
    if is_canonical(x):
        assert VirtAddr.try_new(x).as_u64() == x
        assert VirtAddr(x).as_u64() == x
    else:
        with pytest.raises(VirtAddrNotValid):
            VirtAddr.try_new(x)


@pytest.mark.parametrize(
    "x",
    [
        0x0000_8123_DEAD_BEEF,
        0x0000_8000_0000_0000,
        0x0001_0000_0000_0000,
        0xFFFF_0000_0000_0000,
        0xFFFF_7FFF_FFFF_FFFF,
        0x1234_0000_0000_0000,
        0x8000_0000_0000_0000,
    ],
)
def test_a02_try_new_rejects_non_canonical_keeping_full_value(x: int) -> None:
    """A-02: try_new never sign-extends; the error holds the full original value (PR #370)."""
    with pytest.raises(VirtAddrNotValid) as info:
        VirtAddr.try_new(x)
    assert info.value.value == x
    assert info.value.addr == x


@pytest.mark.parametrize(
    "x", [0, 1, 0x7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000, 0xFFFF_8123_DEAD_BEEF, U64_MAX]
)
def test_a02_try_new_accepts_canonical(x: int) -> None:
    """A-02: a canonical value comes back unchanged."""
    assert VirtAddr.try_new(x).as_u64() == x


@pytest.mark.parametrize("ctor", [VirtAddr, VirtAddr.new])
def test_a03_new_panics_on_non_canonical(ctor: Callable[[int], VirtAddr]) -> None:
    """A-03: new() panics with the crate's message."""
    assert_panics(
        "virtual address must be sign extended in bits 48 to 64", ctor, 0x0000_8123_DEAD_BEEF
    )
    assert ctor(0xFFFF_8123_DEAD_BEEF).as_u64() == 0xFFFF_8123_DEAD_BEEF


@pytest.mark.parametrize(
    "raw, expected",
    [
        (0x0000_8123_DEAD_BEEF, 0xFFFF_8123_DEAD_BEEF),
        (0xFFFF_0000_0000_1234, 0x1234),
        (1 << 47, 0xFFFF_8000_0000_0000),
        (123 << 47, 0xFFFF_8000_0000_0000),
        (0x1234, 0x1234),
        (U64_MAX, U64_MAX),
    ],
)
def test_a04_new_truncate_vectors(raw: int, expected: int) -> None:
    """A-04 / 6.1 virtaddr_new_truncate: bits 48..63 become copies of bit 47."""
    assert VirtAddr.new_truncate(raw).as_u64() == expected


def test_a05_new_unsafe_zero_as_u64_is_null() -> None:
    """A-05: new_unsafe does no check; zero() is 0; is_null iff 0."""
    assert VirtAddr.new_unsafe(0x0000_8000_0000_0000).as_u64() == 0x0000_8000_0000_0000
    assert VirtAddr.zero().as_u64() == 0
    assert VirtAddr.zero().is_null()
    assert VirtAddr.zero() == VirtAddr(0)
    assert not VirtAddr(1).is_null()
    assert not VirtAddr(0xFFFF_8000_0000_0000).is_null()


def test_a06_from_ptr_not_applicable() -> None:
    """A-06: not applicable (no raw pointers); see NOT_APPLICABLE. The int constructor is the
    check from_ptr uses: it panics on a non-canonical value."""
    assert "A-06" in NOT_APPLICABLE
    assert not hasattr(VirtAddr, "as_mut_ptr")
    assert_panics("virtual address must be sign extended", VirtAddr, 1 << 47)


def test_a07_virt_addr_not_valid_debug_and_field() -> None:
    """A-07: the error's Debug is ``VirtAddrNotValid(0x8123deadbeef)`` (lower hex, no padding)."""
    with pytest.raises(VirtAddrNotValid) as info:
        VirtAddr.try_new(0x8123_DEAD_BEEF)
    assert repr(info.value) == "VirtAddrNotValid(0x8123deadbeef)"
    assert info.value.value == 0x8123_DEAD_BEEF
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, Panic)


def test_a08_formatting() -> None:
    """A-08: Debug ``VirtAddr(0x1000)``; hex/octal/binary format the raw u64."""
    a = VirtAddr(0x1000)
    assert repr(a) == "VirtAddr(0x1000)"
    assert repr(VirtAddr(0)) == "VirtAddr(0x0)"
    assert f"{a:x}" == "1000"
    assert f"{a:#x}" == "0x1000"
    assert f"{a:X}" == "1000"
    assert f"{VirtAddr(0xABC):#X}" == "0XABC"
    assert f"{a:o}" == "10000"
    assert f"{VirtAddr(5):b}" == "101"
    assert f"{VirtAddr(5):#b}" == "0b101"
    assert f"{a:#018x}" == "0x0000000000001000"
    assert f"{a}" == "VirtAddr(0x1000)"
    assert int(a) == 0x1000
    assert hex(a) == "0x1000"


def test_a08_ordering_and_hash_use_raw_value() -> None:
    """A-08: Eq/Ord/Hash use the raw u64, so upper-half addresses sort above the lower half."""
    lo, hi = VirtAddr(0x7FFF_FFFF_FFFF), VirtAddr(0xFFFF_8000_0000_0000)
    assert lo < hi and hi > lo and lo <= lo and hi >= hi
    assert sorted([hi, VirtAddr(0), lo]) == [VirtAddr(0), lo, hi]
    assert VirtAddr(0x1000) == VirtAddr(0x1000)
    assert hash(VirtAddr(0x1000)) == hash(VirtAddr(0x1000))
    assert len({VirtAddr(1), VirtAddr(1), VirtAddr(2)}) == 2
    # The two address types never compare equal or ordered.
    assert VirtAddr(0x1000) != PhysAddr(0x1000)
    with pytest.raises(TypeError):
        _ = VirtAddr(0x1000) < PhysAddr(0x2000)


# -- 1.2 alignment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr, align, expected",
    [
        (0, 1, 0),
        (1234, 1, 1234),
        (1235, 2, 1234),
        (0x1FFF, 0x1000, 0x1000),
        (0x1000, 0x1000, 0x1000),
        (U64_MAX, 1 << 63, 1 << 63),
        (U64_MAX, 1, U64_MAX),
    ],
)
def test_a09_align_down(addr: int, align: int, expected: int) -> None:
    """A-09: align_down masks with !(align-1)."""
    assert align_down(addr, align) == expected


@pytest.mark.parametrize("fn", [align_down, align_up])
@pytest.mark.parametrize("align", [0, 3, 6, 0x1001])
def test_a09_a10_align_must_be_power_of_two(fn: Callable[[int, int], int], align: int) -> None:
    """A-09, A-10: a non-power-of-two alignment (0 included) panics."""
    assert_panics("`align` must be a power of two", fn, 0x1000, align)


@pytest.mark.parametrize(
    "addr, align, expected",
    [
        # 6.1 test_align_up, verbatim
        (0, 1, 0),
        (1234, 1, 1234),
        (U64_MAX, 1, U64_MAX),
        (0, 2, 0),
        (1233, 2, 1234),
        (0xFFFF_FFFF_FFFF_FFFE, 2, 0xFFFF_FFFF_FFFF_FFFE),
        (0, 128, 0),
        (0, 1 << 63, 0),
        # more
        (1, 0x1000, 0x1000),
        (0x1000, 0x1000, 0x1000),
        (1, 1 << 63, 1 << 63),
    ],
)
def test_a10_align_up(addr: int, align: int, expected: int) -> None:
    """A-10 / 6.1 test_align_up: aligned input is unchanged, else (addr | (align-1)) + 1."""
    assert align_up(addr, align) == expected


@pytest.mark.parametrize("addr, align", [(U64_MAX, 2), (U64_MAX - 1, 4), ((1 << 63) + 1, 1 << 63)])
def test_a10_align_up_overflow_panics(addr: int, align: int) -> None:
    """A-10: a result past u64::MAX panics with the add-overflow message."""
    assert_panics("attempt to add with overflow", align_up, addr, align)


def test_a11_virt_addr_align_up_jumps_the_hole() -> None:
    """A-11 / 6.1 test_virt_addr_align_up: raw align_up then new_truncate."""
    assert VirtAddr(0x7FFF_FFFF_FFFF).align_up(2) == VirtAddr(0xFFFF_8000_0000_0000)
    assert VirtAddr(0x7FFF_FFFF_F001).align_up(0x1000) == VirtAddr(0xFFFF_8000_0000_0000)
    assert VirtAddr(0x1001).align_up(0x1000) == VirtAddr(0x2000)
    assert VirtAddr(0x1000).align_up(0x1000) == VirtAddr(0x1000)
    assert VirtAddr(0xFFFF_8000_0000_0001).align_up(0x1000) == VirtAddr(0xFFFF_8000_0000_1000)


def test_a11_virt_addr_align_up_overflow() -> None:
    """A-11 / 6.1 test_virt_addr_align_up_overflow: u64::MAX.align_up(2) panics."""
    assert_panics("attempt to add with overflow", VirtAddr(U64_MAX).align_up, 2)
    assert_panics("`align` must be a power of two", VirtAddr(0x1000).align_up, 3)


def test_a12_virt_addr_align_down_truncates() -> None:
    """A-12 / 6.1 test_virt_addr_align_down: 0xffff_8000_0000_0000 by 2^48 gives 0."""
    assert VirtAddr(0xFFFF_8000_0000_0000).align_down(1 << 48) == VirtAddr(0)
    assert VirtAddr(0xFFFF_FFFF_FFFF_FFFF).align_down(1 << 47) == VirtAddr(0xFFFF_8000_0000_0000)
    assert VirtAddr(0x1FFF).align_down(0x1000) == VirtAddr(0x1000)
    assert VirtAddr(0xFFFF_8000_0000_0000).align_down(1 << 63) == VirtAddr(0)
    assert_panics("`align` must be a power of two", VirtAddr(0x1000).align_down, 0)


@pytest.mark.parametrize(
    "addr, align, expected",
    [
        (0x1000, 0x1000, True),
        (0x1001, 0x1000, False),
        (0, 1 << 63, True),
        (0x1234, 1, True),
        (0xFFFF_8000_0000_0000, 1 << 47, True),
        # align_down(2^48) of an upper-half address is 0, so it is "not aligned" (A-12 + A-13)
        (0xFFFF_8000_0000_0000, 1 << 48, False),
    ],
)
def test_a13_is_aligned(addr: int, align: int, expected: bool) -> None:
    """A-13: is_aligned(a) <=> align_down(a) == self."""
    assert VirtAddr(addr).is_aligned(align) is expected


def test_a13_is_aligned_asserts_power_of_two() -> None:
    """A-13: is_aligned also asserts that the alignment is a power of two."""
    assert_panics("`align` must be a power of two", VirtAddr(0x1000).is_aligned, 0x1001)
    assert_panics("`align` must be a power of two", PhysAddr(0x1000).is_aligned, 0)


class _Align(enum.IntEnum):
    PAGE = 0x1000


@pytest.mark.parametrize("align", [0x1000, _Align.PAGE, (1 << 31) >> 19])
def test_a14_alignment_accepts_any_integer(align: int) -> None:
    """A-14: align_up/align_down/is_aligned take any unsigned integer (u32, u64, ... = int)."""
    assert VirtAddr(0x1234).align_up(align) == VirtAddr(0x2000)
    assert VirtAddr(0x1234).align_down(align) == VirtAddr(0x1000)
    assert VirtAddr(0x2000).is_aligned(align)
    assert PhysAddr(0x1234).align_up(align) == PhysAddr(0x2000)


# -- 1.3 indices ----------------------------------------------------------------------------


def test_a15_index_accessors_octal_vector() -> None:
    """A-15 (Appendix B): 0o123_456_701_234_5670 splits into p4..p1 and the page offset."""
    a = VirtAddr(0o123_456_701_234_5670)
    assert a.p4_index() == PageTableIndex(0o123)
    assert a.p3_index() == PageTableIndex(0o456)
    assert a.p2_index() == PageTableIndex(0o701)
    assert a.p1_index() == PageTableIndex(0o234)
    assert a.page_offset() == PageOffset(0o5670)
    assert isinstance(a.p1_index(), PageTableIndex)
    assert isinstance(a.page_offset(), PageOffset)


def test_a15_upper_half_indices_ignore_sign_extension() -> None:
    """A-15: each index is value & 511, so bits 48..63 never leak into p4_index."""
    a = VirtAddr(0xFFFF_FFFF_FFFF_FFFF)
    assert [int(i) for i in (a.p4_index(), a.p3_index(), a.p2_index(), a.p1_index())] == [511] * 4
    assert int(a.page_offset()) == 0xFFF
    assert int(VirtAddr(0xFFFF_8000_0000_0000).p4_index()) == 256


@given(canonical)
def test_a16_page_table_index_equals_accessors(x: int) -> None:
    """A-16: page_table_index(level) = (addr >> 12 >> 9*(level-1)) & 511 = pN_index()."""
    a = VirtAddr(x)
    assert a.page_table_index(PageTableLevel.One) == a.p1_index()
    assert a.page_table_index(PageTableLevel.Two) == a.p2_index()
    assert a.page_table_index(PageTableLevel.Three) == a.p3_index()
    assert a.page_table_index(PageTableLevel.Four) == a.p4_index()
    for level in PageTableLevel:
        assert int(a.page_table_index(level)) == (x >> 12 >> (9 * (level - 1))) & 511


# -- 1.4 arithmetic -------------------------------------------------------------------------


def test_a17_add() -> None:
    """A-17 / 6.1 add_overflow_virtaddr: checked add; u64 wrap and non-canonical results panic."""
    assert VirtAddr(0x1000) + 0x234 == VirtAddr(0x1234)
    assert VirtAddr(0xFFFF_8000_0000_0000) + 1 == VirtAddr(0xFFFF_8000_0000_0001)
    assert VirtAddr(0x7FFF_FFFF_FFFE) + 1 == VirtAddr(0x7FFF_FFFF_FFFF)
    assert_panics("attempt to add with overflow", VirtAddr(U64_MAX).__add__, 1)
    e = assert_panics(
        "attempt to add resulted in non-canonical virtual address",
        VirtAddr(0x7FFF_FFFF_FFFF).__add__,
        1,
    )
    assert str(e) == (
        "attempt to add resulted in non-canonical virtual address: VirtAddrNotValid(0x800000000000)"
    )


def test_a18_sub() -> None:
    """A-18 / 6.1 sub_underflow_virtaddr: 0 - 1 panics; a result inside the hole panics."""
    assert VirtAddr(0x1234) - 0x234 == VirtAddr(0x1000)
    assert VirtAddr(0x1234).sub(0x234) == VirtAddr(0x1000)
    assert_panics("attempt to subtract with overflow", VirtAddr(0).__sub__, 1)
    e = assert_panics(
        "attempt to subtract resulted in non-canonical virtual address",
        VirtAddr(0xFFFF_8000_0000_0000).__sub__,
        1,
    )
    assert str(e) == (
        "attempt to subtract resulted in non-canonical virtual address: "
        "VirtAddrNotValid(0xffff7fffffffffff)"
    )


def test_a19_augmented_assignment() -> None:
    """A-19: += and -= behave like + and -."""
    a = VirtAddr(0x1000)
    a += 0x1000
    assert a == VirtAddr(0x2000)
    a -= 0x2000
    assert a == VirtAddr(0)
    b = VirtAddr(0x7FFF_FFFF_FFFF)
    with pytest.raises(Panic, match="non-canonical"):
        b += 1
    c = VirtAddr(0)
    with pytest.raises(Panic, match=r"^attempt to subtract with overflow"):
        c -= 1


@pytest.mark.parametrize(
    "a, b, d",
    [
        (0x2000, 0x1000, 0x1000),
        (0x1000, 0x1000, 0),
        (0xFFFF_8000_0000_0000, 0x7FFF_FFFF_FFFF, 0xFFFF_0000_0000_0001),
    ],
)
def test_a20_addr_minus_addr_includes_the_hole(a: int, b: int, d: int) -> None:
    """A-20: VirtAddr - VirtAddr is the raw difference (the hole is counted)."""
    assert VirtAddr(a) - VirtAddr(b) == d
    assert VirtAddr(a).sub_addr(VirtAddr(b)) == d


def test_a20_addr_minus_larger_addr_panics() -> None:
    """A-20: rhs > lhs panics."""
    assert_panics("attempt to subtract with overflow", VirtAddr(0x1000).__sub__, VirtAddr(0x1001))


def test_a21_plain_arithmetic_never_jumps_the_hole_step_does() -> None:
    """A-21 (issues #452, #537): + panics at the hole, Step (forward_checked) jumps it."""
    last_low = VirtAddr(0x7FFF_FFFF_FFFF)
    with pytest.raises(Panic):
        _ = last_low + 1
    assert VirtAddr.forward_checked(last_low, 1) == VirtAddr(0xFFFF_8000_0000_0000)
    with pytest.raises(Panic):
        _ = VirtAddr(0xFFFF_8000_0000_0000) - 1
    assert VirtAddr.backward_checked(VirtAddr(0xFFFF_8000_0000_0000), 1) == last_low


def test_arithmetic_rejects_non_integers() -> None:
    """A-17/A-18: only u64 counts can be added (no float, no address + address)."""
    with pytest.raises(TypeError):
        _ = VirtAddr(0x1000) + 1.0  # type: ignore[operator]  # on purpose
    with pytest.raises(TypeError):
        _ = VirtAddr(0x1000) + VirtAddr(1)  # type: ignore[operator]  # on purpose
    with pytest.raises(TypeError):
        _ = VirtAddr(0x1000) - PhysAddr(1)  # type: ignore[operator]  # on purpose
    with pytest.raises(ValueError):
        _ = VirtAddr(0x1000) + (-1)


# -- 1.5 Step ---------------------------------------------------------------------------------

FORWARD = [
    # 6.1 virtaddr_step_forward
    (0, 0, 0),
    (0, 1, 1),
    (0x7FFF_FFFF_FFFF, 1, 0xFFFF_8000_0000_0000),
    (0xFFFF_FFFF_FFFF_FFFF, 1, None),
    (0x7FFF_FFFF_FFFF, 0x1234_5678_9ABD, 0xFFFF_9234_5678_9ABC),
    (0x7FFF_FFFF_FFFF, 0x8000_0000_0000, U64_MAX),
    (0x7FFF_FFFF_FF00, 0x8000_0000_00FF, U64_MAX),
    (0x7FFF_FFFF_FF00, 0x8000_0000_0100, None),
    (0x7FFF_FFFF_FFFF, 0x8000_0000_0001, None),
    # checklist probes
    (0, 1 << 48, None),
    (0, (1 << 48) - 1, U64_MAX),
    # more: count above 2^48 is refused outright, u64 overflow is None
    (0, (1 << 48) + 1, None),
    (0xFFFF_8000_0000_0000, 0x7FFF_FFFF_FFFF, U64_MAX),
    (0xFFFF_8000_0000_0000, 0x8000_0000_0000, None),
]


@pytest.mark.parametrize("start, n, expected", FORWARD)
def test_a22_forward_checked_vectors(start: int, n: int, expected: int | None) -> None:
    """A-22 / 6.1 virtaddr_step_forward."""
    r = VirtAddr.forward_checked(VirtAddr(start), n)
    assert (None if r is None else r.as_u64()) == expected
    if expected is None:
        assert_panics("overflow in `Step::forward`", VirtAddr.forward, VirtAddr(start), n)
    else:
        assert VirtAddr.forward(VirtAddr(start), n) == VirtAddr(expected)


BACKWARD = [
    # 6.1 virtaddr_step_backward
    (0, 0, 0),
    (0, 1, None),
    (1, 1, 0),
    (0xFFFF_8000_0000_0000, 1, 0x7FFF_FFFF_FFFF),
    (0xFFFF_8000_0000_0001, 1, 0xFFFF_8000_0000_0000),
    (0xFFFF_9234_5678_9ABC, 0x1234_5678_9ABD, 0x7FFF_FFFF_FFFF),
    (0xFFFF_8000_0000_0000, 0x8000_0000_0000, 0),
    (0xFFFF_8000_0000_0000, 0x7FFF_FFFF_FF01, 0xFF),
    (0xFFFF_8000_0000_0000, 0x8000_0000_0001, None),
    # more
    (U64_MAX, (1 << 48) - 1, 0),
    (U64_MAX, 1 << 48, None),
    (U64_MAX, (1 << 48) + 1, None),
]


@pytest.mark.parametrize("start, n, expected", BACKWARD)
def test_a23_backward_checked_vectors(start: int, n: int, expected: int | None) -> None:
    """A-23 / 6.1 virtaddr_step_backward."""
    r = VirtAddr.backward_checked(VirtAddr(start), n)
    assert (None if r is None else r.as_u64()) == expected
    if expected is None:
        assert_panics("overflow in `Step::backward`", VirtAddr.backward, VirtAddr(start), n)
    else:
        assert VirtAddr.backward(VirtAddr(start), n) == VirtAddr(expected)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # 6.1 virtaddr_steps_between
        (0, 0, (0, 0)),
        (0, 1, (1, 1)),
        (1, 0, (0, None)),
        (0x7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000, (1, 1)),
        (0xFFFF_8000_0000_0000, 0x7FFF_FFFF_FFFF, (0, None)),
        (0, 0x1_0000_0000, (0x1_0000_0000, 0x1_0000_0000)),
        # more
        (0, U64_MAX, ((1 << 48) - 1, (1 << 48) - 1)),
    ],
)
def test_a24_steps_between_vectors(a: int, b: int, expected: tuple[int, int | None]) -> None:
    """A-24 / 6.1 virtaddr_steps_between: (lower, upper or None); the hole is masked away."""
    assert VirtAddr.steps_between(VirtAddr(a), VirtAddr(b)) == expected


@given(canonical)
def test_a25_forward_by_zero_and_one(x: int) -> None:
    """A-25 (Kani: forward by 0/1 from any canonical address)."""
    a = VirtAddr(x)
    assert VirtAddr.forward_checked(a, 0) == a
    r = VirtAddr.forward_checked(a, 1)
    if x == U64_MAX:
        assert r is None
    elif x == 0x7FFF_FFFF_FFFF:
        assert r == VirtAddr(0xFFFF_8000_0000_0000)
    else:
        assert r == VirtAddr(x + 1)


@given(canonical, st.integers(0, 1 << 48), st.integers(0, 1 << 48))
def test_a25_forward_is_additive(x: int, m: int, n: int) -> None:
    """A-25 (Kani: forward(a) then forward(b) == forward(a + b), when both exist)."""
    a = VirtAddr(x)
    step1 = VirtAddr.forward_checked(a, m)
    whole = VirtAddr.forward_checked(a, m + n)
    if step1 is not None:
        step2 = VirtAddr.forward_checked(step1, n)
        if step2 is not None and m + n <= 1 << 48:
            assert whole == step2
        if whole is not None:
            assert step2 == whole


@given(canonical, st.integers(0, 1 << 48))
def test_a25_forward_backward_symmetry_and_steps_between(x: int, n: int) -> None:
    """A-25 (Kani: forward => backward symmetric; forward <=> steps_between)."""
    a = VirtAddr(x)
    f = VirtAddr.forward_checked(a, n)
    if f is not None:
        assert VirtAddr.backward_checked(f, n) == a
        assert VirtAddr.steps_between(a, f) == (n, n)
    b = VirtAddr.backward_checked(a, n)
    if b is not None:
        assert VirtAddr.forward_checked(b, n) == a
        assert VirtAddr.steps_between(b, a) == (n, n)


@given(canonical, canonical)
def test_a25_steps_between_then_forward(x: int, y: int) -> None:
    """A-25 (Kani: steps_between(a, b) = (n, Some n) => forward(a, n) == b)."""
    a, b = VirtAddr(x), VirtAddr(y)
    lo, hi = VirtAddr.steps_between(a, b)
    if hi is None:
        assert b < a and lo == 0
    else:
        assert lo == hi
        assert VirtAddr.forward_checked(a, lo) == b


# -- 1.6 PhysAddr -----------------------------------------------------------------------------


@pytest.mark.parametrize("x", [1 << 52, 0xFFF0_0000_0000_0000, U64_MAX, 1 << 63])
def test_a26_phys_addr_rejects_bits_52_to_63(x: int) -> None:
    """A-26: try_new -> PhysAddrNotValid(original); new panics with the crate's text."""
    with pytest.raises(PhysAddrNotValid) as info:
        PhysAddr.try_new(x)
    assert info.value.value == x
    assert info.value.addr == x
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set", PhysAddr, x
    )
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set", PhysAddr.new, x
    )


def test_a26_phys_addr_not_valid_debug_and_valid_values() -> None:
    """A-26: Debug ``PhysAddrNotValid(0x10000000000000)``; every value below 2^52 is valid."""
    with pytest.raises(PhysAddrNotValid) as info:
        PhysAddr.try_new(1 << 52)
    assert repr(info.value) == "PhysAddrNotValid(0x10000000000000)"
    for x in (0, 0x1000, (1 << 52) - 1):
        assert PhysAddr.try_new(x).as_u64() == x
        assert PhysAddr(x).as_u64() == x


@pytest.mark.parametrize(
    "raw, expected",
    [(0xFFF0_0000_0000_1234, 0x1234), (1 << 52, 0), (U64_MAX, (1 << 52) - 1), (0x1234, 0x1234)],
)
def test_a27_phys_new_truncate(raw: int, expected: int) -> None:
    """A-27: new_truncate is x mod 2^52."""
    assert PhysAddr.new_truncate(raw).as_u64() == expected


def test_a27_phys_new_unsafe_zero_is_null() -> None:
    """A-27: new_unsafe, zero, as_u64, is_null."""
    assert PhysAddr.new_unsafe(1 << 52).as_u64() == 1 << 52
    assert PhysAddr.zero() == PhysAddr(0)
    assert PhysAddr.zero().is_null()
    assert not PhysAddr(0x1000).is_null()


def test_a28_phys_align() -> None:
    """A-28 / 6.1 test_phys_addr_align_up_overflow: align_up validates the 52-bit result."""
    assert PhysAddr(0x1001).align_up(0x1000) == PhysAddr(0x2000)
    assert PhysAddr(0x1000).align_up(0x1000) == PhysAddr(0x1000)
    assert PhysAddr(0x1FFF).align_down(0x1000) == PhysAddr(0x1000)
    assert PhysAddr((1 << 52) - 1).align_down(1 << 63) == PhysAddr(0)
    assert PhysAddr(0x2000).is_aligned(0x1000)
    assert not PhysAddr(0x2001).is_aligned(0x1000)
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set",
        PhysAddr(0x000F_FFFF_FFFF_FFFF).align_up,
        2,
    )
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set",
        PhysAddr(1).align_up,
        1 << 52,
    )
    # (a PhysAddr is below 2^52, so the raw align_up can never wrap u64: 2^63 is the maximum)
    assert_panics("physical addresses must not have any bits", PhysAddr(1).align_up, 1 << 63)
    assert_panics("`align` must be a power of two", PhysAddr(1).align_up, 3)


def test_a29_phys_add_sub() -> None:
    """A-29 / 6.1 add_overflow_physaddr, sub_overflow_physaddr."""
    assert PhysAddr(0x1000) + 0x234 == PhysAddr(0x1234)
    assert PhysAddr(0x1234) - 0x234 == PhysAddr(0x1000)
    assert PhysAddr(0x1234) - PhysAddr(0x234) == 0x1000
    assert PhysAddr(0x1234).sub_addr(PhysAddr(0x234)) == 0x1000
    assert PhysAddr(0x1234).sub(0x234) == PhysAddr(0x1000)
    unwrap = "called `Option::unwrap()` on a `None` value"
    # 6.1 add_overflow_physaddr: this sum wraps u64, so checked_add(..).unwrap() panics
    assert_panics(unwrap, PhysAddr(0xF_FFFF_FFFF_FFFF).__add__, 0xFFFF_0000_0000_0000)
    # result >= 2^52 without wrapping -> PhysAddr::new panics
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set",
        PhysAddr(0xF_FFFF_FFFF_FFFF).__add__,
        1,
    )
    assert_panics(
        "physical addresses must not have any bits in the range 52 to 64 set",
        PhysAddr(0).__add__,
        0xFFF0_0000_0000_0000,
    )
    # u64 wrap and underflow -> unwrap on None
    assert_panics(unwrap, PhysAddr(0xF_FFFF_FFFF_FFFF).__add__, U64_MAX)
    assert_panics(unwrap, PhysAddr(0).__sub__, 1)
    assert_panics(unwrap, PhysAddr(0).__sub__, PhysAddr(1))
    a = PhysAddr(0x1000)
    a += 0x1000
    a -= 0x800
    assert a == PhysAddr(0x1800)


def test_a30_phys_addr_has_no_index_accessors_or_step() -> None:
    """A-30: no page offset / index accessors and no Step on PhysAddr (PR #567 is open)."""
    for name in (
        "page_offset",
        "p1_index",
        "p2_index",
        "p3_index",
        "p4_index",
        "page_table_index",
        "forward_checked",
        "backward_checked",
        "steps_between",
    ):
        assert not hasattr(PhysAddr, name), name
        assert hasattr(VirtAddr, name), name


def test_a30_phys_addr_formatting() -> None:
    """A-30: Debug ``PhysAddr(0x1000)``; hex/octal/binary like VirtAddr."""
    a = PhysAddr(0x1000)
    assert repr(a) == "PhysAddr(0x1000)"
    assert f"{a:#x}" == "0x1000" and f"{a:X}" == "1000"
    assert f"{a:o}" == "10000" and f"{PhysAddr(6):b}" == "110"
    assert hash(a) == hash(PhysAddr(0x1000))
    assert PhysAddr(1) < PhysAddr(2)


def test_a31_memory_encryption_not_modelled() -> None:
    """A-31: not applicable (memory_encryption is not modelled); see NOT_APPLICABLE."""
    assert "A-31" in NOT_APPLICABLE
    assert not hasattr(kvmpage.addr, "enable_memory_encryption")
    assert not hasattr(PageTableFlags, "ENCRYPTED")
    # Without encryption, no bit below 52 is special for PhysAddr.
    assert PhysAddr.new_truncate(U64_MAX).as_u64() == (1 << 52) - 1
    assert PhysAddr.try_new(1 << 51).as_u64() == 1 << 51


@pytest.mark.parametrize(
    "ctor",
    [
        VirtAddr,
        VirtAddr.try_new,
        VirtAddr.new_truncate,
        PhysAddr,
        PhysAddr.try_new,
        PhysAddr.new_truncate,
    ],
)
@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_out_of_u64_range_is_rejected(ctor: Callable[[int], object], bad: int) -> None:
    """A-01/A-26: values outside u64 cannot exist in Rust; here they are a ValueError."""
    with pytest.raises(ValueError):
        ctor(bad)


# -- cases from the crate's issues (checklist section 7, I-ids; the rest: test_mapper.py) ----------


def test_i19_try_new_is_strict() -> None:
    """I-19 (#299 -> #370) / A-02: try_new rejects a non-canonical address and keeps the full
    original value (no silent sign extension)."""
    with pytest.raises(VirtAddrNotValid) as ei:
        VirtAddr.try_new(0x0000_8123_DEAD_BEEF)
    assert ei.value.addr == 0x8123_DEAD_BEEF
    assert repr(ei.value) == "VirtAddrNotValid(0x8123deadbeef)"


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (
            lambda: VirtAddr(0x7FFF_FFFF_FFFF) + 1,
            "attempt to add resulted in non-canonical virtual address: "
            "VirtAddrNotValid(0x800000000000)",
        ),
        (
            lambda: VirtAddr(0xFFFF_8000_0000_0000) - 1,
            "attempt to subtract resulted in non-canonical virtual address: "
            "VirtAddrNotValid(0xffff7fffffffffff)",
        ),
        (lambda: VirtAddr(0xFFFF_FFFF_FFFF_FFFF) + 1, "attempt to add with overflow"),
        (lambda: VirtAddr(0) - 1, "attempt to subtract with overflow"),
        (lambda: PhysAddr(0xF_FFFF_FFFF_FFFF) + 0xFFFF_0000_0000_0000, ""),
        (lambda: PhysAddr(0) - 1, ""),
        (
            lambda: page4k(0x7FFF_FFFF_F000) + 1,
            "attempt to add resulted in non-canonical virtual address",
        ),
    ],
    ids=[
        "virt-add-hole",
        "virt-sub-hole",
        "virt-add-overflow",
        "virt-sub-underflow",
        "phys-add-overflow",
        "phys-sub-underflow",
        "page-add-hole",
    ],
)
def test_i20_checked_arithmetic_panics(op: Callable[[], object], message: str) -> None:
    """I-20 (#452, #537 intended; #535 checked arithmetic; #543 texts) / A-17..A-21 / P-10:
    `+`/`-` never jump the canonical hole and panic on overflow, with the crate's texts.
    (#290, the checked add in frame_to_pointer, is test_mp02_* in test_mapper_mapped.py.)"""
    with pytest.raises(Panic) as ei:
        op()
    assert str(ei.value).startswith(message)


def test_i20_address_difference_includes_the_hole() -> None:
    """I-20 / A-20: VirtAddr - VirtAddr is the raw difference (hole included)."""
    assert VirtAddr(0xFFFF_8000_0000_0000) - VirtAddr(0x7FFF_FFFF_FFFF) == 0xFFFF_0000_0000_0001
    with pytest.raises(Panic, match=r"^attempt to subtract with overflow"):
        VirtAddr(0) - VirtAddr(1)


def test_i21_align_functions() -> None:
    """I-21 (#375) / A-09..A-12 / A-28: VirtAddr align uses sign truncation (jumps the hole),
    PhysAddr.align_up validates the result; free functions assert a power of two."""
    assert VirtAddr(0x7FFF_FFFF_FFFF).align_up(2) == VirtAddr(0xFFFF_8000_0000_0000)
    assert VirtAddr(0xFFFF_8000_0000_0000).align_down(1 << 48) == VirtAddr(0)
    with pytest.raises(Panic, match=r"^attempt to add with overflow"):
        VirtAddr(0xFFFF_FFFF_FFFF_FFFF).align_up(2)
    with pytest.raises(
        Panic, match=r"^physical addresses must not have any bits in the range 52 to 64 set"
    ):
        PhysAddr(0xF_FFFF_FFFF_FFFF).align_up(2)
    assert align_up(0, 1 << 63) == 0
    with pytest.raises(Panic, match=r"^`align` must be a power of two"):
        align_down(5, 0)


def test_i24_step_parts_modelled() -> None:
    """I-24 (partly): #342 Step for VirtAddr/Page jumps the hole; #513 steps_between returns
    (lower, upper); #464 Step for PageTableIndex; #212/#567 (Step for PhysFrame/PhysAddr) are
    not in 0.15.4 and absent here."""
    assert VirtAddr.forward_checked(VirtAddr(0x7FFF_FFFF_FFFF), 1) == VirtAddr(
        0xFFFF_8000_0000_0000
    )
    assert Page.forward_checked(page4k(0x7FFF_FFFF_F000), 1) == page4k(0xFFFF_8000_0000_0000)
    assert VirtAddr.steps_between(VirtAddr(0x7FFF_FFFF_FFFF), VirtAddr(0xFFFF_8000_0000_0000)) == (
        1,
        1,
    )
    assert VirtAddr.steps_between(VirtAddr(1), VirtAddr(0)) == (0, None)
    assert PageTableIndex.forward_checked(PageTableIndex(511), 1) is None
    assert not hasattr(PhysFrame, "forward_checked")
    assert not hasattr(PhysAddr, "forward_checked")
