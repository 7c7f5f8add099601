"""The `Mapper` operations as all three mappers share them (``map_to``, ``unmap``,
``update_flags``, ``translate``, ``identity_map``, the flush they return), pinned by the cases
derived from the crate's issues and PRs: checklist section 7 (I-01..I-31).

Each test names its I-id and the upstream issue. The behaviour under test is that of the crate
at 0.15.4, including the parts its maintainers consider bugs (#534, #561, #610): kvmpage ports
them as they are. The I-cases about one module live in that module's test file: addresses
(I-19..I-21, I-24) in test_addr.py, pages and ranges (I-22, I-23, I-25) in test_page.py,
`OffsetPageTable` (I-06, I-20) in test_mapper_mapped.py, the recursive mapper (I-13..I-16) in
test_mapper_recursive.py, clean-up (I-17, I-18) in test_cleanup.py.

Out of scope (``grep I-xx tests/`` lands on the test or on the reason):

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
      (steps_between returns (lower, Option<upper>)) are modelled and tested in test_addr.py; "const
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

import pytest
from support import (
    STRICT_FLUSH_TOKENS,
    Env,
    F,
    H,
    P,
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
    VirtAddr,
)
from kvmpage.paging import (
    ADDRESS_MASK,
    BumpFrameAllocator,
    Mapped,
    MappedFrame,
    MapperFlush,
    NotMapped,
    Page,
    PageAlreadyMapped,
    PageNotMapped,
    PageTableEntry,
    ParentEntryHugePage,
    PhysFrame,
    RecordingTlb,
    Size1GiB,
    Size2MiB,
    UnmapError,
)

pytestmark = STRICT_FLUSH_TOKENS

FLAGS_OF = ~ADDRESS_MASK & 0xFFFF_FFFF_FFFF_FFFF


@pytest.fixture(params=["mapped", "offset", "recursive"])
def env(request: pytest.FixtureRequest) -> Env:
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


@pytest.mark.parametrize("size", ["2MiB", "1GiB"])
def test_i07_parent_entry_huge_page_has_two_meanings(env: Env, size: str) -> None:
    """I-07 (#610, open): for a 2MiB/1GiB unmap, UnmapError.ParentEntryHugePage means both "a
    parent maps a huge page" and "the target entry is a table pointer, not a huge page"."""
    target: Page[Size2MiB] | Page[Size1GiB]
    inside_huge_parent: Page[Size2MiB] | None
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
