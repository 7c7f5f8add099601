"""Checklist section 3 (``page_table.rs``): flags, entries, tables, indices and levels, rules
T-01..T-20. The crate has no unit tests for this file (6.4); the "(verified)" probe values of the
checklist are ported here. Every test cites the rule it pins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvmpage import Panic, PhysAddr, PhysMemory, PhysMemoryError
from kvmpage.index import ENTRY_COUNT, PageOffset, PageTableIndex, PageTableLevel
from kvmpage.paging import (
    ADDRESS_MASK,
    FrameError,
    FrameNotPresent,
    HugeFrame,
    PageTable,
    PageTableEntry,
    PageTableFlags,
    PhysFrame,
    Size2MiB,
    Size4KiB,
)

F = PageTableFlags

NOT_APPLICABLE = {
    "T-11": "repr(C, align(4096)), Clone and Default of a Rust PageTable value have no direct "
    "counterpart: a PageTable here is a live view of a 4 KiB frame of a PhysMemory. The "
    "observable parts (512 entries, 4 KiB alignment, zero on creation) are tested.",
}


def assert_panics(prefix: str, fn: Callable[..., object], *args: object) -> Panic:
    """Call ``fn(*args)``; it must raise `Panic` whose message starts with ``prefix``."""
    with pytest.raises(Panic) as info:
        fn(*args)
    assert str(info.value).startswith(prefix), str(info.value)
    return info.value


@pytest.fixture
def memory() -> Iterator[PhysMemory]:
    m = PhysMemory(0x10000)
    with m:
        yield m


def frame(addr: int) -> PhysFrame[Size4KiB]:
    return PhysFrame.containing_address(PhysAddr(addr))


# -- 3.1 flags --------------------------------------------------------------------------------

NAMED_BITS = [
    ("PRESENT", 0),
    ("WRITABLE", 1),
    ("USER_ACCESSIBLE", 2),
    ("WRITE_THROUGH", 3),
    ("NO_CACHE", 4),
    ("ACCESSED", 5),
    ("DIRTY", 6),
    ("HUGE_PAGE", 7),
    ("GLOBAL", 8),
    ("BIT_9", 9),
    ("BIT_10", 10),
    ("BIT_11", 11),
    *[(f"BIT_{b}", b) for b in range(52, 63)],
    ("NO_EXECUTE", 63),
]


@pytest.mark.parametrize("name, bit", NAMED_BITS)
def test_t01_named_bits(name: str, bit: int) -> None:
    """T-01: every named flag sits at the bit the table of 3.1 gives."""
    assert int(PageTableFlags[name]) == 1 << bit
    assert F.all().contains(PageTableFlags[name])


def test_t01_all_bits() -> None:
    """T-01: all().bits() == 0xfff0_0000_0000_0fff: 24 named bits, none in the address field."""
    assert F.all().bits() == 0xFFF0_0000_0000_0FFF
    assert len(NAMED_BITS) == 24
    assert {m.name for m in F} == {n for n, _ in NAMED_BITS}
    assert F.all().bits() & ADDRESS_MASK == 0
    assert F.all().bits() | ADDRESS_MASK == (1 << 64) - 1


def test_t02_no_pat_or_protection_key_flags() -> None:
    """T-02: 0.15.4 has no PAT / protection-key flags (PAT support was reverted)."""
    for name in ("PAT", "PAT_4KIB_PAGE", "PAT_HUGE_PAGE", "PROTECTION_KEY", "PK", "ENCRYPTED"):
        assert name not in F.__members__, name


def test_t03_debug() -> None:
    """T-03: Debug ``PageTableFlags(PRESENT | WRITABLE)``; empty is ``PageTableFlags(0x0)``
    (bitflags 2 prints an empty set as 0x0); unnamed bits trail as hex."""
    assert repr(F.PRESENT | F.WRITABLE) == "PageTableFlags(PRESENT | WRITABLE)"
    assert repr(F.WRITABLE | F.PRESENT) == "PageTableFlags(PRESENT | WRITABLE)"
    assert repr(F.empty()) == "PageTableFlags(0x0)"
    assert repr(F.from_bits_retain(1 | 1 << 20)) == "PageTableFlags(PRESENT | 0x100000)"
    assert repr(F.NO_EXECUTE) == "PageTableFlags(NO_EXECUTE)"


def test_t03_set_operations() -> None:
    """T-03: | & ^ and ! (complement over the named bits), contains, insert, remove."""
    pw = F.PRESENT | F.WRITABLE
    assert isinstance(pw, F)
    assert pw & F.WRITABLE == F.WRITABLE
    assert pw ^ F.PRESENT == F.WRITABLE
    assert pw.contains(F.PRESENT) and pw.contains(pw) and not pw.contains(F.USER_ACCESSIBLE)
    assert pw.intersects(F.PRESENT | F.GLOBAL) and not pw.intersects(F.GLOBAL)
    assert (pw | F.USER_ACCESSIBLE).bits() == 0b111  # insert
    assert (pw & ~F.PRESENT) == F.WRITABLE  # remove
    assert F.empty().is_empty() and not pw.is_empty()
    # bitflags' `!` is the complement within the named bits: it never sets address-field bits
    assert (~F.PRESENT).bits() == 0xFFF0_0000_0000_0FFE
    assert F.PRESENT.complement() == ~F.PRESENT
    assert (~F.all()).bits() == 0
    assert (~F.empty()) == F.all()


def test_t03_from_bits_variants() -> None:
    """T-03: from_bits / from_bits_truncate / from_bits_retain (bitflags 2 API)."""
    raw = 0x8000_0000_0010_0003
    assert F.from_bits(raw) is None
    assert F.from_bits(0x3) == F.PRESENT | F.WRITABLE
    assert F.from_bits_truncate(raw) == F.NO_EXECUTE | F.PRESENT | F.WRITABLE
    assert F.from_bits_retain(raw).bits() == raw
    assert F.from_names("PRESENT | writable") == F.PRESENT | F.WRITABLE
    with pytest.raises(ValueError):
        F.from_names("PRESENT | BOGUS")


def test_t03_eq_ord_hash() -> None:
    """T-03: derived Eq, Ord, Hash on the bits."""
    assert F.PRESENT < F.WRITABLE < F.NO_EXECUTE
    assert hash(F.PRESENT | F.WRITABLE) == hash(F.from_bits_retain(3))
    assert len({F.PRESENT, F.from_bits_retain(1), F.WRITABLE}) == 2


# -- 3.2 entries --------------------------------------------------------------------------------


def test_t04_new_is_unused_set_unused() -> None:
    """T-04: new()/default is 0; is_unused iff raw == 0; set_unused writes 0."""
    e = PageTableEntry()
    assert e.raw == 0 and e.is_unused()
    assert PageTableEntry.new().is_unused()
    e.set_unused()
    assert e.raw == 0


@pytest.mark.parametrize("raw", [F.BIT_9, F.BIT_62, F.ACCESSED, 0x1000, F.NO_EXECUTE])
def test_t04_any_set_bit_makes_an_entry_used(raw: int) -> None:
    """T-04: any set bit, even a lone OS bit or a bare address, makes the entry used."""
    e = PageTableEntry(int(raw))
    assert not e.is_unused()
    e.set_unused()
    assert e.is_unused() and e.raw == 0


def test_t05_address_mask_addr_flags() -> None:
    """T-05: mask bits 12..51; addr() = raw & mask (can be 0); flags() keeps every other bit."""
    assert ADDRESS_MASK == 0x000F_FFFF_FFFF_F000
    raw = 0xFFFF_FFFF_FFFF_FFFF
    e = PageTableEntry(raw)
    assert e.addr() == PhysAddr(0x000F_FFFF_FFFF_F000)
    assert e.flags().bits() == 0xFFF0_0000_0000_0FFF
    assert e.flags() == F.all()
    e = PageTableEntry(int(F.PRESENT | F.BIT_52 | F.NO_EXECUTE))
    assert e.addr() == PhysAddr(0)
    assert e.flags() == F.PRESENT | F.BIT_52 | F.NO_EXECUTE
    e = PageTableEntry(0x1234_5000 | int(F.PRESENT | F.WRITABLE))
    assert e.addr() == PhysAddr(0x1234_5000)
    assert e.flags() == F.PRESENT | F.WRITABLE
    assert isinstance(e.flags(), F)
    assert isinstance(e.addr(), PhysAddr)


@pytest.mark.parametrize(
    "raw, outcome",
    [
        (0, FrameNotPresent),
        (0x5000, FrameNotPresent),
        (0x5000 | F.WRITABLE, FrameNotPresent),
        # PRESENT is checked first: non-present + HUGE_PAGE is FrameNotPresent
        (0x5000 | F.HUGE_PAGE, FrameNotPresent),
        (0x20_0000 | F.PRESENT | F.HUGE_PAGE, HugeFrame),
        (0x5000 | F.PRESENT, 0x5000),
        (0x5000 | F.PRESENT | F.WRITABLE | F.NO_EXECUTE | F.BIT_9, 0x5000),
        (F.PRESENT, 0),
    ],
)
def test_t06_frame(raw: int, outcome: int | type[FrameError]) -> None:
    """T-06: frame(): PRESENT clear -> FrameNotPresent (first); HUGE_PAGE -> HugeFrame."""
    e = PageTableEntry(int(raw))
    if isinstance(outcome, int):
        f = e.frame()
        assert type(f) is PhysFrame
        assert f == frame(outcome)
    else:
        with pytest.raises(outcome) as info:
            e.frame()
        assert isinstance(info.value, FrameError)
        assert not isinstance(info.value, Panic)


def test_t06_frame_error_family() -> None:
    """T-06: FrameNotPresent and HugeFrame are the two FrameError variants."""
    assert issubclass(FrameNotPresent, FrameError)
    assert issubclass(HugeFrame, FrameError)
    assert not issubclass(FrameNotPresent, HugeFrame)
    assert not issubclass(HugeFrame, FrameNotPresent)


def test_t07_set_addr() -> None:
    """T-07: set_addr writes addr | flags; the address must be 4 KiB aligned (panic)."""
    e = PageTableEntry()
    e.set_addr(PhysAddr(0x1000), F.PRESENT | F.WRITABLE)
    assert e.raw == 0x1003
    assert_panics("assertion failed", e.set_addr, PhysAddr(0x1001), F.PRESENT)
    assert e.raw == 0x1003  # unchanged by the failed call
    with pytest.raises(TypeError):
        e.set_addr(0x1000, F.PRESENT)  # type: ignore[arg-type]  # not a PhysAddr, on purpose


def test_t07_set_addr_does_not_mask_flags() -> None:
    """T-07 (verified): flags with bits 12..51 corrupt the address: addr 0x101000, no flags."""
    e = PageTableEntry()
    e.set_addr(PhysAddr(0x1000), F.from_bits_retain(1 << 20))
    assert e.addr() == PhysAddr(0x10_1000)
    assert e.flags() == F.empty()


def test_t07_set_addr_accepts_2mib_misaligned_huge() -> None:
    """T-07: a 4 KiB aligned but 2 MiB misaligned address is accepted even with HUGE_PAGE."""
    e = PageTableEntry()
    e.set_addr(PhysAddr(0x20_1000), F.PRESENT | F.HUGE_PAGE)
    assert e.addr() == PhysAddr(0x20_1000)
    assert e.flags() == F.PRESENT | F.HUGE_PAGE


def test_t08_set_frame() -> None:
    """T-08: set_frame asserts HUGE_PAGE is not in flags, then set_addr."""
    e = PageTableEntry()
    e.set_frame(frame(0x7000), F.PRESENT | F.USER_ACCESSIBLE)
    assert e.raw == 0x7005
    assert e.frame() == frame(0x7000)
    assert_panics(
        "assertion failed: !flags.contains(PageTableFlags::HUGE_PAGE)",
        e.set_frame,
        frame(0x8000),
        F.PRESENT | F.HUGE_PAGE,
    )
    assert e.raw == 0x7005
    # only 4 KiB frames can be stored with set_frame
    with pytest.raises(TypeError):
        huge = PhysFrame[Size2MiB].containing_address(PhysAddr(0))
        e.set_frame(huge, F.PRESENT)  # type: ignore[arg-type]  # a 2 MiB frame, on purpose


def test_t09_set_flags_replaces_flags_keeps_address() -> None:
    """T-09: set_flags: raw = addr() | flags, all old flags gone."""
    e = PageTableEntry(0x9000 | int(F.PRESENT | F.WRITABLE | F.NO_EXECUTE | F.BIT_9))
    e.set_flags(F.USER_ACCESSIBLE)
    assert e.raw == 0x9004
    e.set_flags(F.empty())
    assert e.raw == 0x9000 and not e.is_unused()
    # the complement of a flag never reaches the address field (T-03 `!`)
    e.set_flags(~F.PRESENT)
    assert e.addr() == PhysAddr(0x9000)
    assert e.flags() == F.all() & ~F.PRESENT


def test_t10_entry_debug() -> None:
    """T-10: Debug ``PageTableEntry { addr: PhysAddr(0x1000), flags: PageTableFlags(...) }``."""
    e = PageTableEntry(0x1000 | int(F.PRESENT | F.WRITABLE))
    assert repr(e) == (
        "PageTableEntry { addr: PhysAddr(0x1000), flags: PageTableFlags(PRESENT | WRITABLE) }"
    )
    assert repr(PageTableEntry()) == (
        "PageTableEntry { addr: PhysAddr(0x0), flags: PageTableFlags(0x0) }"
    )


def test_entry_equality() -> None:
    """T-04/T-05: entries compare by raw value (a detached entry equals a live one)."""
    assert PageTableEntry(0x1003) == PageTableEntry(0x1003)
    assert PageTableEntry(0x1003) != PageTableEntry(0x1001)


# -- 3.3 tables ---------------------------------------------------------------------------------


def test_t11_table_has_512_entries_in_a_4kib_frame(memory: PhysMemory) -> None:
    """T-11: exactly 512 entries (ENTRY_COUNT), one 4 KiB aligned frame of memory."""
    t = PageTable(memory, 0x3000)
    assert ENTRY_COUNT == 512 == PageTable.ENTRY_COUNT == len(t)
    assert len(list(t)) == 512
    assert t.frame() == frame(0x3000)
    assert t.phys == 0x3000
    with pytest.raises(PhysMemoryError):
        PageTable(memory, 0x3008)
    with pytest.raises(PhysMemoryError):
        PageTable(memory, 0x10000)
    assert PageTable(memory, PhysAddr(0x3000)) == t
    assert "T-11" in NOT_APPLICABLE


def test_t11_table_entries_are_little_endian_u64_in_memory(memory: PhysMemory) -> None:
    """T-11: entry i of the table at p is the little-endian u64 at p + 8*i."""
    t = PageTable(memory, 0x3000)
    t[5] = 0x1122_3344_5566_7788
    assert memory.read(0x3000 + 8 * 5, 8) == bytes.fromhex("8877665544332211")
    memory.write_u64(0x3000 + 8 * 511, 0xABC003)
    assert t[511].raw == 0xABC003
    assert t[511].frame() == frame(0xABC000)
    t[5].set_flags(F.PRESENT)
    assert memory.read_u64(0x3000 + 8 * 5) == (0x1122_3344_5566_7788 & ADDRESS_MASK) | 1


def test_t12_new_zero_is_empty(memory: PhysMemory) -> None:
    """T-12: a fresh table is all zero; is_empty iff all 512 raw values are 0; zero() clears."""
    t = PageTable(memory, 0x2000)
    assert t.is_empty()
    t[511] = int(F.BIT_9)  # a lone OS bit is enough to make it non-empty
    assert not t.is_empty()
    t[0].set_addr(PhysAddr(0x5000), F.PRESENT)
    t.zero()
    assert t.is_empty()
    assert t.raw_entries() == [0] * 512
    # zero() touches only this table's frame
    memory.write_u64(0x1FF8, 0xDEAD)
    memory.write_u64(0x3000, 0xBEEF)
    t.zero()
    assert memory.read_u64(0x1FF8) == 0xDEAD and memory.read_u64(0x3000) == 0xBEEF


def test_t13_iteration_in_index_order_and_writes_through(memory: PhysMemory) -> None:
    """T-13: iter() / iter_mut() yield the 512 entries in index order (live views)."""
    t = PageTable(memory, 0x4000)
    for i in range(512):
        t[i] = i << 12 | 1
    assert [e.raw for e in t.iter()] == [i << 12 | 1 for i in range(512)]
    for e in t:  # iter_mut
        e.set_flags(F.PRESENT | F.WRITABLE)
    assert t.raw_entries() == [i << 12 | 3 for i in range(512)]


def test_t13_table_in_the_last_frame_iterates(memory: PhysMemory) -> None:
    """T-13 (issue #424 / PR #425): a table in the very last frame iterates without overrun."""
    last = memory.size - 0x1000
    t = PageTable(memory, last)
    for e in t:
        e.set_addr(PhysAddr(0x1000), F.PRESENT)
    assert len([e for e in t if not e.is_unused()]) == 512
    assert memory.read_u64(memory.size - 8) == 0x1001
    assert memory.read_u64(last - 8) == 0  # nothing before the table touched


@pytest.mark.parametrize("bad", [512, 513, 1 << 20, -1])
def test_t14_int_index_out_of_range_panics(memory: PhysMemory, bad: int) -> None:
    """T-14: indexing by an integer >= 512 panics (index out of bounds)."""
    t = PageTable(memory, 0x1000)
    assert_panics("index out of bounds: the len is 512", t.__getitem__, bad)
    assert_panics("index out of bounds: the len is 512", t.__setitem__, bad, 1)
    assert memory.read_u64(0x2000) == 0  # the slot after the table untouched


def test_t14_index_by_page_table_index(memory: PhysMemory) -> None:
    """T-14: indexing by PageTableIndex is always in range and equals the int index."""
    t = PageTable(memory, 0x1000)
    t[PageTableIndex(511)] = 0x5003
    assert t[511].raw == 0x5003
    assert t[PageTableIndex.new_truncate(1023)] == t[511]
    t[PageTableIndex(0)] = PageTableEntry(0x6001)
    assert t[0].raw == 0x6001


# -- 3.4 indices --------------------------------------------------------------------------------


def test_t15_page_table_index() -> None:
    """T-15: new asserts < 512; new_truncate is % 512; int conversion; Debug; Ord; Hash."""
    assert int(PageTableIndex(511)) == 511
    assert PageTableIndex.new(5) == PageTableIndex(5)
    assert_panics("assertion failed", PageTableIndex, 512)
    assert_panics("assertion failed", PageTableIndex.new, 1000)
    assert PageTableIndex.new_truncate(513) == PageTableIndex(1)
    assert PageTableIndex.new_truncate(512) == PageTableIndex(0)
    assert repr(PageTableIndex(5)) == "PageTableIndex(5)"
    assert PageTableIndex(1) < PageTableIndex(2) <= PageTableIndex(2)
    assert PageTableIndex(3) > PageTableIndex(2) >= PageTableIndex(2)
    assert len({PageTableIndex(1), PageTableIndex(1), PageTableIndex(2)}) == 2
    assert [0, 1, 2][PageTableIndex(2)] == 2  # usable as an index (usize conversion)
    assert PageTableIndex(7).__index__() == 7


@pytest.mark.parametrize(
    "fn, start, n, expected",
    [
        (PageTableIndex.forward_checked, 511, 1, None),
        (PageTableIndex.forward_checked, 0, 511, 511),
        (PageTableIndex.forward_checked, 0, 512, None),
        (PageTableIndex.forward_checked, 3, 0, 3),
        (PageTableIndex.backward_checked, 0, 1, None),
        (PageTableIndex.backward_checked, 511, 511, 0),
        (PageTableIndex.backward_checked, 10, 3, 7),
    ],
)
def test_t16_page_table_index_step(
    fn: Callable[[PageTableIndex, int], PageTableIndex | None],
    start: int,
    n: int,
    expected: int | None,
) -> None:
    """T-16 (verified fwd(511,1)=None, back(0,1)=None): Step never leaves 0..512."""
    r = fn(PageTableIndex(start), n)
    assert (None if r is None else int(r)) == expected


def test_t16_page_table_index_steps_between() -> None:
    """T-16: steps_between like u16: (d, Some d) or (0, None) when reversed."""
    sb = PageTableIndex.steps_between
    assert sb(PageTableIndex(3), PageTableIndex(5)) == (2, 2)
    assert sb(PageTableIndex(5), PageTableIndex(5)) == (0, 0)
    assert sb(PageTableIndex(5), PageTableIndex(3)) == (0, None)


def test_t17_page_offset() -> None:
    """T-17: new asserts < 4096; new_truncate is % 4096; integer conversions."""
    assert int(PageOffset(4095)) == 4095
    assert PageOffset.new(7) == PageOffset(7)
    assert_panics("assertion failed", PageOffset, 4096)
    assert_panics("assertion failed", PageOffset.new, 5000)
    assert PageOffset.new_truncate(4097) == PageOffset(1)
    assert PageOffset.new_truncate(4096) == PageOffset(0)
    assert repr(PageOffset(12)) == "PageOffset(12)"
    assert PageOffset(1) < PageOffset(2)
    assert hash(PageOffset(3)) == hash(PageOffset(3))
    assert PageOffset(9).__index__() == 9


# -- 3.5 levels ---------------------------------------------------------------------------------

L = PageTableLevel


def test_t18_levels() -> None:
    """T-18: One=1..Four=4, ordered; next_lower_level / next_higher_level chains."""
    assert [int(lv) for lv in (L.One, L.Two, L.Three, L.Four)] == [1, 2, 3, 4]
    assert L.One < L.Two < L.Three < L.Four
    assert [
        L.Four.next_lower_level(),
        L.Three.next_lower_level(),
        L.Two.next_lower_level(),
        L.One.next_lower_level(),
    ] == [L.Three, L.Two, L.One, None]
    assert [
        L.One.next_higher_level(),
        L.Two.next_higher_level(),
        L.Three.next_higher_level(),
        L.Four.next_higher_level(),
    ] == [L.Two, L.Three, L.Four, None]


@pytest.mark.parametrize(
    "level, table_span, entry_span",
    [
        (L.One, 2 << 20, 4 << 10),
        (L.Two, 1 << 30, 2 << 20),
        (L.Three, 512 << 30, 1 << 30),
        (L.Four, 1 << 48, 512 << 30),
    ],
)
def test_t19_address_space_alignments(
    level: PageTableLevel, table_span: int, entry_span: int
) -> None:
    """T-19 (verified): table span 2^(9*level+12), entry span 2^(9*(level-1)+12)."""
    assert level.table_address_space_alignment() == table_span
    assert level.entry_address_space_alignment() == entry_span


def test_t20_no_level_five() -> None:
    """T-20: there is no level Five (no LA57)."""
    assert len(L) == 4
    with pytest.raises(ValueError):
        L(5)
    with pytest.raises(ValueError):
        L(0)
    assert "Five" not in L.__members__
    assert L.Four.next_higher_level() is None


def test_t15_t17_indices_and_offsets_are_fully_ordered_and_refuse_other_types() -> None:
    """T-15, T-17: Ord on PageTableIndex / PageOffset; comparing with an int is a TypeError."""
    from kvmpage.paging import PageOffset, PageTableIndex

    a, b = PageTableIndex(3), PageTableIndex(7)
    assert a < b and a <= b and b > a and b >= a and a <= PageTableIndex(3)
    o, p = PageOffset(1), PageOffset(4095)
    assert o < p and o <= p and p > o and p >= o
    with pytest.raises(TypeError):
        _ = a < 5
    with pytest.raises(TypeError):
        _ = o >= 5
