"""5-level paging in the software mapper (rules L5-01..L5-11): what only a 5-level mapper has.

The crate has no 5-level paging (its issue #435; docs/divergences.md). The crate's rules are
checked at both depths by the rule-by-rule modules (test_mapper_mapped.py,
test_mapper_recursive.py, test_cleanup.py, test_map_range.py, test_stateful.py), whose fixtures
run every mapper with ``levels=4`` and ``levels=5``. This module pins what those cannot: the
57-bit types, the exact frames and recursive addresses of a 5-level walk (one more table on
every path), the level-5 entry's setter, and the type checks that keep the depths apart.

The expected values are worked out by hand from the architecture (Intel SDM vol. 3A, 4.5):
a 57-bit address is canonical when bits 57..63 copy bit 56, and its level-5 index is bits
48..56.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import support
from support import (
    ALLOC_START,
    MEM_SIZE,
    NX,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    H,
    P,
    R,
    U,
    W,
    frame1g,
    frame4k,
    idx,
    page4k,
)

from kvmpage import Panic, PhysAddr, PhysMemory, VirtAddr, VirtAddr57
from kvmpage.index import PageTableIndex
from kvmpage.paging import (
    MapperFlushAll,
    OffsetPageTable,
    Page,
    Page57,
    PageRangeInclusive,
    PageTable,
    Size1GiB,
    Size4KiB,
    recursive_table_address,
)
from kvmpage.paging.walk import resolve_below

pytestmark = STRICT_FLUSH_TOKENS

KINDS = ["mapped", "offset", "recursive"]
#: a page only 5-level paging reaches: level-5 slot 1, then indices 2, 3, 4, 5
VA57 = (1 << 48) | (2 << 39) | (3 << 30) | (4 << 21) | (5 << 12)


def page57(va: int) -> Page57[Size4KiB]:
    return Page57.from_start_address(VirtAddr57(va))


@dataclass
class Env(support.Env):
    def unmap(self, page: Any) -> None:
        self.mapper.unmap(page)[1].ignore()

    def freed(self) -> list[int]:
        return [int(f.start_address()) for f in self.alloc.deallocated]


def make_env(kind: str, levels: int = 4) -> Env:
    """An `Env` of ``kind`` at ``levels`` over a fresh probe arena (see `support.build_mapper`)."""
    e = support.make_env(kind, PhysMemory(MEM_SIZE), levels=levels)
    return Env(e.kind, e.memory, e.mapper, e.alloc)


@pytest.fixture(params=KINDS)
def env5(request: pytest.FixtureRequest) -> Iterator[Env]:
    """Each mapper at 5 levels over the probe arena (the level-5 table at P4_PHYS)."""
    e = make_env(request.param, levels=5)
    yield e
    e.memory.close()


# -- L5-01..L5-03: the 57-bit types --------------------------------------------------------------


def test_l5_01_canonical_at_57_bits() -> None:
    """Bits 57..63 must copy bit 56: 2**56 - 1 is the last lower-half address, 0xff00.. the
    first upper-half one; a 48-bit canonical address is 57-bit canonical too."""
    assert VirtAddr57(0x00FF_FFFF_FFFF_FFFF).as_u64() == 0x00FF_FFFF_FFFF_FFFF
    assert VirtAddr57(0xFF00_0000_0000_0000).as_u64() == 0xFF00_0000_0000_0000
    assert VirtAddr57(0x0000_8000_0000_0000).as_u64() == 1 << 47  # not 48-bit canonical
    with pytest.raises(Panic, match="sign extended in bits 57 to 64"):
        VirtAddr57(0x0100_0000_0000_0000)
    assert VirtAddr57.new_truncate(0x0100_0000_0000_0000) == VirtAddr57(0xFF00_0000_0000_0000)
    assert VirtAddr57(int(VirtAddr(0xFFFF_8000_0000_0000))).as_u64() == 0xFFFF_8000_0000_0000


def test_l5_03_p5_index_and_indices_round_trip() -> None:
    """p5_index is bits 48..56; from_page_table_indices with p5 >= 256 is an upper-half page."""
    assert int(VirtAddr57(VA57).p5_index()) == 1 and int(VirtAddr57(VA57).p4_index()) == 2
    i = PageTableIndex
    page = Page57.from_page_table_indices(i(1), i(2), i(3), i(4), i(5))
    assert page.start_address().as_u64() == VA57 and int(page.p5_index()) == 1
    upper = Page57.from_page_table_indices(i(256), i(0), i(0), i(0), i(0))
    assert upper.start_address().as_u64() == 0xFF00_0000_0000_0000


def test_l5_02_page57_converts_to_and_from_page() -> None:
    """A 48-bit page is a 57-bit page too; the reverse only below 2**47 or from 0xffff_8000.."""
    p = Page57.from_page(page4k(0xFFFF_8000_0000_0000))
    assert isinstance(p, Page57) and p.start_address().as_u64() == 0xFFFF_8000_0000_0000
    assert p.to_page() == page4k(0xFFFF_8000_0000_0000)
    with pytest.raises(Exception, match="not a canonical virtual address"):
        page57(VA57).to_page()


# -- L5-04: the depths are kept apart -----------------------------------------------------------


@pytest.mark.parametrize("bad", [3, 6, True, "5"])
def test_l5_04_levels_is_4_or_5(bad: object) -> None:
    memory = PhysMemory(MEM_SIZE)
    with pytest.raises((TypeError, ValueError), match="levels must be 4"):
        OffsetPageTable(PageTable(memory, P4_PHYS), VirtAddr(0), levels=bad)  # type: ignore[arg-type]
    memory.close()


@pytest.mark.parametrize("kind", KINDS)
def test_l5_04_a_4_level_mapper_refuses_57_bit_types(kind: str) -> None:
    """A 57-bit page or address may not exist under 4-level paging: `TypeError`, nothing
    allocated, rather than a silent truncation to 48 bits."""
    e = make_env(kind)
    with pytest.raises(TypeError, match="5-level mapper"):
        e.mapper.map_to(page57(VA57), frame4k(0x9000), P | W, e.alloc)
    with pytest.raises(TypeError, match="5-level mapper"):
        e.mapper.translate(VirtAddr57(VA57))
    with pytest.raises(TypeError, match="needs a 5-level mapper"):
        e.mapper.set_flags_p5_entry(page4k(0x1000), P)
    with pytest.raises(TypeError, match="no level-5 table"):
        e.mapper.level_5_table()
    assert e.alloc.allocated == []


def test_l5_04_walk_beyond_48_bits_creates_one_table_per_level(env5: Env) -> None:
    """map_to of a page in level-5 slot 1 creates a level-4, -3, -2 and -1 table (0x2000..0x5000)
    and links them at the page's indices; translate finds the frame again, a 48-bit address
    with the same low 48 bits does not."""
    env5.map(page57(VA57), frame4k(0x7777_7000), P | W | U)
    assert env5.allocated() == [0x2000, 0x3000, 0x4000, 0x5000]
    assert env5.memory.read_u64(P4_PHYS + 8 * 1) == 0x2000 | int(P | W | U)
    assert env5.memory.read_u64(0x2000 + 8 * 2) == 0x3000 | int(P | W | U)
    assert env5.memory.read_u64(0x3000 + 8 * 3) == 0x4000 | int(P | W | U)
    assert env5.memory.read_u64(0x4000 + 8 * 4) == 0x5000 | int(P | W | U)
    assert env5.memory.read_u64(0x5000 + 8 * 5) == 0x7777_7000 | int(P | W | U)
    assert env5.mapper.translate_addr(VirtAddr57(VA57 + 0x123)) == PhysAddr(0x7777_7123)
    assert env5.mapper.translate_addr(VirtAddr(VA57 & ((1 << 48) - 1))) is None
    assert env5.mapper.level_5_table().phys == P4_PHYS
    with pytest.raises(TypeError, match="level_5_table"):
        env5.mapper.level_4_table()


def test_l5_05_identity_map_above_2_pow_47(env5: Env) -> None:
    """A physical address >= 2**47 is a canonical 57-bit virtual address: a 5-level mapper
    identity-maps it (a 4-level one panics, M-03) as a `Page57`."""
    env5.mapper.identity_map(frame1g(0xF_FFFF_C000_0000), P | W, env5.alloc).flush()
    assert env5.mapper.translate_addr(VirtAddr57(0xF_FFFF_C000_0123)) == PhysAddr(
        0xF_FFFF_C000_0123
    )
    assert env5.entry(0xF_FFFF_C000_0000, 3) == 0xF_FFFF_C000_0000 | int(P | W | H)


# -- L5-07, L5-08: the level-5 entry -------------------------------------------------------------


def test_l5_07_huge_bit_in_a_level_5_entry(env5: Env) -> None:
    """PS is reserved in a PML5E as in a PML4E: translate panics like the crate's level-4 check
    when the entry is present; a non-present one stops the walk first (MP-25), except for the
    recursive mapper, which looks only at whether the entry is unused (R-15)."""
    env5.memory.write_u64(P4_PHYS + 8 * 1, 0x2000 | int(W | H))
    if env5.kind == "recursive":
        with pytest.raises(Panic, match=r"^level 5 entry has huge page bit set"):
            env5.mapper.translate_addr(VirtAddr57(VA57))
    else:
        assert env5.mapper.translate_addr(VirtAddr57(VA57)) is None
    env5.memory.write_u64(P4_PHYS + 8 * 1, 0x2000 | int(P | W | H))
    with pytest.raises(Panic, match=r"^level 5 entry has huge page bit set"):
        env5.mapper.translate_addr(VirtAddr57(VA57))


def test_l5_08_set_flags_p5_entry_replaces_exactly(env5: Env) -> None:
    """set_flags_p5_entry keeps the address and replaces the flags (no OR); it returns a
    MapperFlushAll; a missing level-5 entry is PageNotMapped."""
    from kvmpage.paging import PageNotMapped

    env5.map(page57(VA57), frame4k(0x9000), P | W)
    tok = env5.mapper.set_flags_p5_entry(page57(VA57), P | U | NX)
    assert isinstance(tok, MapperFlushAll)
    tok.ignore()
    assert env5.memory.read_u64(P4_PHYS + 8 * 1) == 0x2000 | int(P | U | NX)
    assert env5.memory.read_u64(0x2000 + 8 * 2) == 0x3000 | int(P | W)  # the level below kept
    with pytest.raises(PageNotMapped):
        env5.mapper.set_flags_p5_entry(page57(0xFF00_0000_0000_0000), P)


# -- L5-09: recursive addresses with five indices ------------------------------------------------


def test_l5_09_recursive_table_address_has_five_indices() -> None:
    """(r, r, r, r, r) at 5 levels, a VirtAddr57; r = 511 gives the last page of the space at
    both depths; a missing index is padded with r on the left."""
    assert recursive_table_address(511, levels=5) == VirtAddr57(0xFFFF_FFFF_FFFF_F000)
    a = recursive_table_address(R, 1, 2, levels=5)
    assert isinstance(a, VirtAddr57)
    v = a.as_u64()
    assert [(v >> (12 + 9 * k)) & 511 for k in range(4, -1, -1)] == [R, R, R, 1, 2]
    assert v >> 57 == 0x7F  # R >= 256: the upper half, sign-extended from bit 56
    full = recursive_table_address(R, 1, 2, 3, 4, levels=5).as_u64()  # r and four indices
    assert [(full >> (12 + 9 * k)) & 511 for k in range(4, -1, -1)] == [R, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="4 indices at most"):
        recursive_table_address(R, 1, 2, 3, 4, 5, levels=5)


def test_l5_09_child_tables_resolve_to_the_created_frames() -> None:
    """The level-4 table of a page is at (r, r, r, r, p5), its level-3 at (r, r, r, p5, p4),
    level-2 at (r, r, p5, p4, p3) and level-1 at (r, p5, p4, p3, p2): walked under CR3 they
    reach the frames map_to created, in the order it created them."""
    e = make_env("recursive", levels=5)
    e.map(page57(VA57), frame4k(0x7000_0000))
    p5, p4, p3, p2 = (idx(VA57, level) for level in (5, 4, 3, 2))
    tables = {
        4: recursive_table_address(R, p5, levels=5),
        3: recursive_table_address(R, p5, p4, levels=5),
        2: recursive_table_address(R, p5, p4, p3, levels=5),
        1: recursive_table_address(R, p5, p4, p3, p2, levels=5),
    }
    for level, frame in zip((4, 3, 2, 1), e.allocated(), strict=True):
        assert resolve_below(e.memory, P4_PHYS, tables[level].as_u64(), 5) == frame
    assert e.mapper.table_address() == recursive_table_address(R, levels=5)
    e.memory.close()


# -- L5-10: clean-up one level deeper ------------------------------------------------------------


def c04_state5(e: Env) -> None:
    """The C-04 probe at 5 levels: three pages mapped (level-5 slots 0 and 511), unmapped."""
    pages = [page4k(0x1000), page4k(0x20_0000), page4k(0xFFFF_8000_0000_0000)]
    for i, p in enumerate(pages):
        e.map(p, frame4k(0x1000_0000 + 0x1000 * i))
    # slot 0: P4 0x2000, P3 0x3000, P2 0x4000, P1 0x5000, P1 0x6000; slot 511: 0x7000..0xA000
    assert e.allocated() == [ALLOC_START + 0x1000 * k for k in range(9)]
    for p in pages:
        e.unmap(p)


def test_l5_10_deallocation_order(env5: Env) -> None:
    """C-04 at 5 levels: depth-first, ascending index, children before parents, the level-4
    tables too; the level-5 table is never freed (only the recursive entry stays)."""
    c04_state5(env5)
    env5.mapper.clean_up_addr_range(PageRangeInclusive(page4k(0x3000), page4k(0x3000)), env5.alloc)
    assert env5.freed() == [0x5000]
    env5.mapper.clean_up(env5.alloc)
    assert env5.freed() == [0x5000, 0x6000, 0x4000, 0x3000, 0x2000, 0xA000, 0x9000, 0x8000, 0x7000]
    top = [i for i in range(512) if env5.memory.read_u64(P4_PHYS + 8 * i)]
    assert top == ([R] if env5.kind == "recursive" else [])


def test_l5_10_range_beyond_48_bits_frees_only_its_tables(env5: Env) -> None:
    """A range inside level-5 slot 1 frees the empty tables under that slot, level-4 table
    included, and keeps the tables of level-5 slot 0."""
    env5.map(page4k(0x1000), frame4k(0x9000))
    env5.map(page57(VA57), frame4k(0xA000))
    env5.unmap(page57(VA57))
    first: Page57[Size4KiB] = Page57.containing_address(VirtAddr57(1 << 48))
    last: Page57[Size4KiB] = Page57.containing_address(VirtAddr57((2 << 48) - 4096))
    env5.mapper.clean_up_addr_range(PageRangeInclusive(first, last), env5.alloc)
    assert env5.freed() == [0x9000, 0x8000, 0x7000, 0x6000]  # P1, P2, P3, then the level-4
    assert env5.memory.read_u64(P4_PHYS + 8 * 1) == 0
    assert env5.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)


def test_l5_10_lower_half_ends_at_2_pow_56(env5: Env) -> None:
    """The crate's doc-test range at 5 levels: the lower half is 0 ..= 0x00ff_ffff_ffff_f000;
    its empty tables are freed, the upper half's are kept."""
    env5.map(page4k(0x1000), frame4k(0x9000))
    env5.map(page57(0xFF00_0000_0000_0000), frame4k(0xA000))
    for va in (0x1000, 0xFF00_0000_0000_0000):
        env5.unmap(Page57.containing_address(VirtAddr57(va)))
    lower: PageRangeInclusive[Size4KiB] = PageRangeInclusive(
        Page57.containing_address(VirtAddr57(0)),
        Page57.containing_address(VirtAddr57(0x00FF_FFFF_FFFF_F000)),
    )
    env5.mapper.clean_up_addr_range(lower, env5.alloc)
    assert env5.freed() == [0x5000, 0x4000, 0x3000, 0x2000]
    assert env5.memory.read_u64(P4_PHYS) == 0
    assert env5.memory.read_u64(P4_PHYS + 8 * 256) == 0x6000 | int(P | W)


def test_l5_widening_is_lossless(env5: Env) -> None:
    """A 5-level mapper takes 48-bit pages as they are: mapping through `Page` and through the
    same page as `Page57` writes the same entry (the second is PageAlreadyMapped)."""
    from kvmpage.paging import PageAlreadyMapped

    page = Page[Size1GiB].from_start_address(VirtAddr(0xFFFF_8000_4000_0000))
    env5.map(page, frame1g(0x4000_0000), P | W)
    with pytest.raises(PageAlreadyMapped):
        env5.mapper.map_to(Page57.from_page(page), frame1g(0x8000_0000), P, env5.alloc)
    assert env5.entry(0xFFFF_8000_4000_0000, 3) == 0x4000_0000 | int(P | W | H)
