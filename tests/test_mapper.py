"""Cases derived from the crate's issues and PRs: checklist section 7 (I-01..I-31).

Each test names its I-id and the upstream issue. The behaviour under test is that of the crate
at 0.15.4, including the parts its maintainers consider bugs (#534, #561, #610): kvmpage ports
them as they are.

Out of scope here (``grep I-xx tests/`` lands on the reason):

====  =====================================================================================
id    why there is no test for it
====  =====================================================================================
I-09  #136 ``Mapper::map`` (allocating the leaf frame) and #192/#266 range mapping are not
      in 0.15.4 and kvmpage does not implement them; nothing to test.
I-11  History only: #149/#207 (translate returns flags), #211 (TranslateResult shape), #214
      (PageTableFrameMapping name), #199 (error types), #204 (?Sized allocator), #184/#327/
      #385 (getters), #556 (impl for &P), #525 (MapperFlush::page). The resulting API is what
      test_mapper_mapped.py (M-04, M-05, M-06, MP-01) and test_flush.py (M-07) test; the
      Rust-only parts (?Sized, the &P forwarding impl) have no Python counterpart.
I-24  Partly: #342 (Step for VirtAddr/Page), #464 (Step for PageTableIndex) and #513
      (steps_between returns (lower, Option<upper>)) are modelled and tested below; "const
      fn" has no Python meaning, and Step for PhysFrame/PhysAddr (#212/#567) is an open PR,
      not 0.15.4 (test_i24 checks it is absent).
I-26  #332/#335 ``Cr2::read`` returns Result: registers are not modelled by the paging port.
I-28  #542/#511/#289/#603 AMD SEV / memory encryption (A-31, feature ``memory_encryption``):
      not modelled; entries keep every bit outside the address mask as flags.
I-29  #169/#316/#508/#509/#472/#403 PCID, INVPCID descriptor order, ``write_pcid_no_flush``,
      INVLPGB: instructions, not part of the software mapper (its Tlb only records invlpg and
      CR3 reloads, see test_flush.py).
I-30  #435/#599/#605 5-level paging: not supported by 0.15.4 (8-01) nor by kvmpage.
I-31  #574/#611/#600 ``MappedPageTable::display`` and the 0.16 release: next branch only.
====  =====================================================================================

Flush tokens are always consumed; a dropped one fails the test (see ``pytestmark``).
"""

from __future__ import annotations

from typing import Any

import pytest
from support import (
    MEM_SIZE,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    Env,
    F,
    H,
    P,
    R,
    U,
    W,
    frame1g,
    frame2m,
    frame4k,
    make_env,
    page1g,
    page2m,
    page4k,
)

from kvmpage import (
    Panic,
    PhysAddr,
    PhysMemory,
    VirtAddr,
    VirtAddrNotValid,
    align_down,
    align_up,
)
from kvmpage.paging import (
    ADDRESS_MASK,
    BumpFrameAllocator,
    Mapped,
    MappedFrame,
    MapperFlush,
    NotActive,
    NotMapped,
    OffsetPageTable,
    Page,
    PageAlreadyMapped,
    PageNotMapped,
    PageTableEntry,
    PageTableIndex,
    ParentEntryHugePage,
    PhysFrame,
    RecordingTlb,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    SoftPageFault,
    UnmapError,
    recursive_table_address,
)
from kvmpage.paging.table import PageTable

pytestmark = STRICT_FLUSH_TOKENS

FLAGS_OF = ~ADDRESS_MASK & 0xFFFF_FFFF_FFFF_FFFF


@pytest.fixture(params=["mapped", "offset", "recursive"])
def env(request: pytest.FixtureRequest) -> Env:
    return make_env(request.param)


@pytest.fixture(params=["mapped", "offset"])
def menv(request: pytest.FixtureRequest) -> Env:
    return make_env(request.param)


# -- mapper semantics -----------------------------------------------------------------------------


def test_i01_user_page_adds_user_to_kernel_parents(env: Env) -> None:
    """I-01 (#113, #112 rejected, #114 merged): parents receive the P/W/U subset of the leaf
    flags; existing kernel parents gain USER_ACCESSIBLE, and a later kernel map keeps it."""
    env.map(page4k(0x1000), frame4k(0x9000), P | W)
    assert all(not env.entry(0x1000, lvl) & int(U) for lvl in (4, 3, 2))
    env.map(page4k(0x2000), frame4k(0xA000), P | W | U)
    assert all(env.entry(0x1000, lvl) & int(U) for lvl in (4, 3, 2))
    env.map(page4k(0x3000), frame4k(0xB000), P)
    assert all(
        env.entry(0x1000, lvl) & FLAGS_OF & int(P | W | U) == int(P | W | U) for lvl in (4, 3, 2)
    )
    assert env.entry(0x3000, 1) == 0xB000 | int(P)


def test_i02_update_flags_does_not_touch_parents(env: Env) -> None:
    """I-02 (#534, open): update_flags edits the leaf only (parents still lack USER) and
    translate's flags are the leaf's only."""
    env.map(page4k(0x1000), frame4k(0x9000), P | W)
    env.mapper.update_flags(page4k(0x1000), P | W | U).ignore()
    assert all(not env.entry(0x1000, lvl) & int(U) for lvl in (4, 3, 2))
    r = env.mapper.translate(VirtAddr(0x1000))
    assert isinstance(r, Mapped) and r.flags == P | W | U


def test_i03_page_already_mapped_gives_back_requested_frame(env: Env) -> None:
    """I-03 (#117/#118, #461): the error carries the requested frame; re-mapping to the same
    frame also errors (with other flags too); update_flags is the way to change flags."""
    env.map(page4k(0x1000), frame4k(0x9000), P)
    with pytest.raises(PageAlreadyMapped) as ei:
        env.mapper.map_to(page4k(0x1000), frame4k(0x9000), P | W, env.alloc)
    assert ei.value.frame == frame4k(0x9000)
    with pytest.raises(PageAlreadyMapped) as ej:
        env.mapper.map_to(page4k(0x1000), frame4k(0x5_5000), P, env.alloc)
    assert ej.value.frame == frame4k(0x5_5000)
    env.mapper.update_flags(page4k(0x1000), P | W).ignore()
    assert env.entry(0x1000, 1) == 0x9000 | int(P | W)


def test_i04_non_zero_non_present_entries_mixed_predicates(env: Env) -> None:
    """I-04 (#561, open): map_to uses raw != 0 (MP-09), unmap uses PRESENT (MP-15), translate of
    a 4KiB leaf says Mapped (MP-28); for a non-present huge entry the mapped mappers say NotMapped
    and the recursive one Mapped (MP-26, R-15)."""
    env.map(page4k(0x1000), frame4k(0x9000))
    env.set_entry(0x2000, 1, 0xA000 | int(F.BIT_11))
    with pytest.raises(PageAlreadyMapped):
        env.mapper.map_to(page4k(0x2000), frame4k(0xB000), P, env.alloc)
    with pytest.raises(PageNotMapped):
        env.mapper.unmap(page4k(0x2000))
    assert env.mapper.translate(VirtAddr(0x2000)) == Mapped(
        MappedFrame(frame4k(0xA000)), 0, F.BIT_11
    )
    env.map(page2m(0x20_0000), frame2m(0x4000_0000))
    env.set_entry(0x20_0000, 2, 0x4000_0000 | int(W | H))
    r = env.mapper.translate(VirtAddr(0x20_0000))
    if env.kind == "recursive":
        assert r == Mapped(MappedFrame(frame2m(0x4000_0000)), 0, W | H)
    else:
        assert r == NotMapped()


def test_i05_update_flags_on_non_present_entry_and_clean_up_keeps_it(env: Env) -> None:
    """I-05 (#481): update_flags works on a non-present non-zero entry (e.g. to make it present
    again), and clean-up keeps such entries and their tables (C-08)."""
    env.map(page4k(0x1000), frame4k(0x9000))
    env.mapper.update_flags(page4k(0x1000), F.BIT_10).ignore()  # "swapped out"
    assert env.entry(0x1000, 1) == 0x9000 | int(F.BIT_10)
    env.mapper.clean_up(env.alloc)
    assert env.alloc.deallocated == []
    env.mapper.update_flags(page4k(0x1000), P | W).ignore()
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)


def test_i06_offset_page_table_map_to_without_present_panics() -> None:
    """I-06 (#554): OffsetPageTable.map_to with flags lacking PRESENT panics 'entry should be
    mapped at this point' (also on master, MP-04.3)."""
    e = make_env("offset")
    with pytest.raises(Panic, match=r"^entry should be mapped at this point"):
        e.mapper.map_to(page4k(0x1000), frame4k(0x9000), W | U, e.alloc)


@pytest.mark.parametrize("size", ["2MiB", "1GiB"])
def test_i07_parent_entry_huge_page_has_two_meanings(env: Env, size: str) -> None:
    """I-07 (#610, open): for a 2MiB/1GiB unmap, UnmapError.ParentEntryHugePage means both "a
    parent maps a huge page" and "the target entry is a table pointer, not a huge page"."""
    if size == "2MiB":
        target, inside_huge_parent = page2m(0x20_0000), page2m(0x4020_0000)
        env.map(page4k(0x20_1000), frame4k(0x9000))  # P2[1] -> a P1 table
        env.map(page1g(0x4000_0000), frame1g(0x8000_0000))  # a 1GiB parent
    else:
        target, inside_huge_parent = page1g(0x4000_0000), None
        env.map(page4k(0x4000_1000), frame4k(0x9000))  # P3[1] -> a P2 table
    with pytest.raises(ParentEntryHugePage) as ei:
        env.mapper.unmap(target)
    assert isinstance(ei.value, UnmapError)
    if inside_huge_parent is not None:
        with pytest.raises(ParentEntryHugePage):
            env.mapper.unmap(inside_huge_parent)


def test_i08_huge_mappings_take_a_4k_frame_allocator(env: Env) -> None:
    """I-08 (#390) / FA-03: mapping 2MiB and 1GiB pages uses a 4KiB allocator (for the tables);
    the leaf frame comes from the caller. An allocator handing out 2MiB frames is refused with a
    TypeError (a compile error in Rust)."""
    env.map(page2m(0x20_0000), frame2m(0x4000_0000))
    env.map(page1g(0x80_0000_0000), frame1g(0x8000_0000))
    assert all(type(f) is PhysFrame for f in env.alloc.allocated)
    big: BumpFrameAllocator[Size2MiB] = BumpFrameAllocator(0x20_0000, 0x40_0000, size=Size2MiB)
    with pytest.raises(TypeError, match="not a 4 KiB PhysFrame"):
        env.mapper.map_to(page2m(0x4000_0000_0000), frame2m(0x20_0000), P | W, big)


def test_i10_identity_map(env: Env) -> None:
    """I-10 (#133/#134) / M-03: identity_map maps a frame at the equal virtual address, and
    panics for physical addresses >= 2**47 (not canonical virtual addresses)."""
    env.mapper.identity_map(frame4k(0x7000), P | W, env.alloc).ignore()
    assert env.mapper.translate_addr(VirtAddr(0x7008)) == PhysAddr(0x7008)
    env.mapper.identity_map(frame1g(0x4000_0000), P, env.alloc).ignore()
    assert env.mapper.translate_addr(VirtAddr(0x4000_1234)) == PhysAddr(0x4000_1234)
    with pytest.raises(Panic, match=r"^virtual address must be sign extended in bits 48 to 64"):
        env.mapper.identity_map(frame4k(0x8000_0000_0000), P, env.alloc)


def test_i12_new_mappings_still_return_a_flush(env: Env) -> None:
    """I-12 (#587, open): map_to of a previously unmapped page still returns a MapperFlush
    (flushing is advisory: the model sees the mapping without it)."""
    tlb = env.mapper.tlb
    assert isinstance(tlb, RecordingTlb)
    tok = env.mapper.map_to(page4k(0x1000), frame4k(0x9000), P | W, env.alloc)
    assert isinstance(tok, MapperFlush)
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)
    assert tlb.log == []
    tok.flush()
    assert tlb.log == [("invlpg", VirtAddr(0x1000))]


# -- recursive tables ---------------------------------------------------------------------------


def test_i13_recursive_index_511_and_index_based_iteration() -> None:
    """I-13 (#424 -> #425): the table at 0xffff_ffff_ffff_f000 (r = 511) iterates its 512
    entries index-based; a mapper with r = 511 maps, translates and cleans up."""
    e = make_env("recursive", r=511)
    assert e.mapper.table_address() == VirtAddr(0xFFFF_FFFF_FFFF_F000)
    entries = list(e.mapper.level_4_table().iter())
    assert len(entries) == 512 and entries[511].raw == P4_PHYS | int(P | W)
    e.map(page4k(0xFFFF_FF00_0000_0000), frame4k(0x9000))  # P4[510], next to the slot
    assert e.mapper.translate_addr(VirtAddr(0xFFFF_FF00_0000_0123)) == PhysAddr(0x9123)
    _, tok = e.mapper.unmap(page4k(0xFFFF_FF00_0000_0000))
    tok.ignore()
    e.mapper.clean_up(e.alloc)
    assert [int(f.start_address()) for f in e.alloc.deallocated] == [0x4000, 0x3000, 0x2000]
    assert e.memory.read_u64(P4_PHYS + 8 * 511) == P4_PHYS | int(P | W)


def test_i14_not_active_and_new_unchecked() -> None:
    """I-14 (#157, open): new() checks entry r against CR3 (NotActive); new_unchecked skips the
    check for callers that know better, and then faults where hardware would."""
    memory = PhysMemory(MEM_SIZE)
    memory.write_u64(P4_PHYS + 8 * R, P4_PHYS | int(W))  # recursive but not present
    with pytest.raises(NotActive):
        RecursivePageTable(memory, recursive_table_address(R), frame4k(P4_PHYS))
    m = RecursivePageTable.new_unchecked(memory, R, frame4k(P4_PHYS))
    with pytest.raises(SoftPageFault):
        m.translate(VirtAddr(0))
    memory.write_u64(P4_PHYS + 8 * R, P4_PHYS | int(P | W))
    assert isinstance(m.translate(VirtAddr(0)), NotMapped)


def test_i15_recursive_entry_must_hold_the_physical_frame() -> None:
    """I-15 (#209): the recursive entry points at the P4's own physical frame; writing the
    table's virtual address into it instead gives NotActive."""
    memory = PhysMemory(MEM_SIZE)
    table_va = recursive_table_address(R)
    memory.write_u64(P4_PHYS + 8 * R, (table_va.as_u64() & ADDRESS_MASK) | int(P | W))
    with pytest.raises(NotActive):
        RecursivePageTable(memory, table_va, frame4k(P4_PHYS))
    memory.write_u64(P4_PHYS + 8 * R, P4_PHYS | int(P | W))
    m = RecursivePageTable(memory, table_va, frame4k(P4_PHYS))
    assert m.recursive_index == R


def test_i16_recursive_mapper_forces_pw_only_on_new_entries() -> None:
    """I-16 (bootloader #443): the recursive mapper makes new parents PRESENT|WRITABLE but does
    not add WRITABLE to an existing read-only parent unless the insert flags ask for it."""
    e = make_env("recursive")
    e.map(page4k(0x1000), frame4k(0x9000), P)
    assert e.entry(0x1000, 4) == 0x2000 | int(P | W)
    e.set_entry(0x1000, 3, 0x3000 | int(P))  # read-only P3 entry
    e.map(page4k(0x2000), frame4k(0xA000), P)
    assert e.entry(0x1000, 3) == 0x3000 | int(P)
    e.map(page4k(0x3000), frame4k(0xB000), P | W)
    assert e.entry(0x1000, 3) == 0x3000 | int(P | W)


def test_i17_clean_up_skips_recursive_slot_and_replaced_filter() -> None:
    """I-17 (#264, #238): clean-up skips the recursive slot (C-11); the filter variant was
    replaced by clean_up_addr_range."""
    e = make_env("recursive")
    e.map(page4k(0x1000), frame4k(0x9000))
    _, tok = e.mapper.unmap(page4k(0x1000))
    tok.ignore()
    e.mapper.clean_up(e.alloc)
    assert e.memory.read_u64(P4_PHYS + 8 * R) == P4_PHYS | int(P | W)
    assert len(e.alloc.deallocated) == 3
    assert not hasattr(e.mapper, "clean_up_with_filter")
    assert callable(e.mapper.clean_up_addr_range)


# -- clean-up -----------------------------------------------------------------------------------


def test_i18_clean_up_with_upper_half_tables_does_not_panic(env: Env) -> None:
    """I-18 (#468 -> #469): a full clean-up with upper-half tables and a range across the hole
    used to panic 'virtual address must be sign extended'; sub-range starts now use
    Step::forward."""
    for va in (0x1000, 0xFFFF_8000_0000_0000, 0xFFFF_FF80_0000_0000):
        env.map(page4k(va), frame4k(0x9000))
        _, tok = env.mapper.unmap(page4k(va))
        tok.ignore()
    env.mapper.clean_up_addr_range(
        Page.range_inclusive(page4k(0x7FFF_FFFF_F000), page4k(0xFFFF_8000_0000_0000)), env.alloc
    )
    env.mapper.clean_up(env.alloc)
    assert len(env.alloc.deallocated) == 9


# -- addresses / pages / ranges -----------------------------------------------------------------


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
def test_i20_checked_arithmetic_panics(op: Any, message: str) -> None:
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


def test_i20_offset_page_table_checked_add() -> None:
    """I-20 (#290): OffsetPageTable's phys -> virt uses the checked VirtAddr add."""
    memory = PhysMemory(MEM_SIZE)
    m = OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(0x7FFF_FFFF_F000))
    memory.write_u64(P4_PHYS, 0x2000 | int(P | W))
    with pytest.raises(Panic, match=r"^attempt to add resulted in non-canonical virtual address"):
        m.translate(VirtAddr(0))


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


def test_i25_range_len_size_and_page_hash() -> None:
    """I-25 (#491, #490, #489): len/size of empty or reversed ranges are 0; Page is hashable."""
    a, b = page4k(0x5000), page4k(0x1000)
    assert Page.range(a, b).len() == 0 and Page.range(a, b).size() == 0
    assert Page.range_inclusive(a, b).len() == 0
    assert Page.range(b, a).len() == 4 and Page.range_inclusive(b, a).size() == 5 * 0x1000
    fr = PhysFrame.range(frame4k(0x1000), frame4k(0x3000))
    assert fr.len() == 2 and fr.size() == 0x2000
    assert len({page4k(0x1000), page4k(0x1000), page2m(0)}) == 2


# -- flags --------------------------------------------------------------------------------------


def test_i27_bit7_in_p1_entry_is_huge_in_0_15_4(env: Env) -> None:
    """I-27 (#529 reverted, #548 next, #612/#613): in 0.15.4 a P1 entry with bit 7 (PAT) is
    treated as HUGE_PAGE: unmap => ParentEntryHugePage, set_frame asserts, the recursive
    translate panics while the mapped translate reports it in the flags."""
    env.map(page4k(0x1000), frame4k(0x9000))
    env.set_entry(0x1000, 1, 0x9000 | int(P | H))
    with pytest.raises(ParentEntryHugePage):
        env.mapper.unmap(page4k(0x1000))
    entry = PageTableEntry()
    with pytest.raises(
        Panic, match=r"^assertion failed: !flags.contains\(PageTableFlags::HUGE_PAGE\)"
    ):
        entry.set_frame(frame4k(0x9000), P | H)
    if env.kind == "recursive":
        with pytest.raises(Panic, match=r"^level 1 entry has huge page bit set"):
            env.mapper.translate(VirtAddr(0x1000))
    else:
        r = env.mapper.translate(VirtAddr(0x1000))
        assert isinstance(r, Mapped) and r.flags == P | H
