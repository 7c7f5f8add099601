"""CleanUp: checklist rules C-01..C-12 (section 5.4) and M-09, on all three mappers.

The checklist says the algorithm is identical for MappedPageTable/OffsetPageTable and
RecursivePageTable (apart from the recursive slot, C-11), so every rule runs on the three. The
scenario of C-04 is the checklist's verified probe: the level-4 table at 0x1000, an allocator
whose frames are 0x2000, 0x3000, ..., the pages 0x1000, 0x20_0000 and 0xffff_8000_0000_0000
mapped and unmapped, a partial clean-up of page 0x3000 (frees 0x4000, C-05), then the full
clean_up deallocating [0x5000, 0x3000, 0x2000, 0x8000, 0x7000, 0x6000].

Flush tokens are always consumed; a dropped one fails the test (see ``pytestmark``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import support
from support import (
    ALLOC_END,
    ALLOC_START,
    MEM_SIZE,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    F,
    P,
    R,
    W,
    build_mapper,
    frame4k,
    page4k,
    pool_allocator,
)

from kvmpage import PhysAddr, PhysMemory, VirtAddr
from kvmpage.paging import (
    FrameDeallocationError,
    Page,
    PageRangeInclusive,
    PhysFrame,
    PoolFrameAllocator,
    RecordingTlb,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    recursive_table_address,
)
from kvmpage.paging.table import PageTable

pytestmark = STRICT_FLUSH_TOKENS

LAST_PAGE = 0xFFFF_FFFF_FFFF_F000


def prange(a: int, b: int) -> PageRangeInclusive[Size4KiB]:
    return Page.range_inclusive(page4k(a), page4k(b))


class LoggingDeallocator:
    """Accepts anything and records it (to observe a double free, C-12)."""

    def __init__(self) -> None:
        self.log: list[int] = []

    def deallocate_frame(self, frame: PhysFrame[Size4KiB]) -> None:
        self.log.append(int(frame.start_address()))


@dataclass
class Env(support.Env):
    def unmap(self, page: Any) -> None:
        _, tok = self.mapper.unmap(page)
        tok.ignore()

    def freed(self) -> list[int]:
        return [int(f.start_address()) for f in self.alloc.deallocated]

    def p4_used(self) -> list[int]:
        """Indices of used level-4 entries, the recursive slot excepted."""
        raws = PageTable(self.memory, P4_PHYS).raw_entries()
        return [i for i, r in enumerate(raws) if r and not (self.kind == "recursive" and i == R)]


def make_env(kind: str, levels: int = 4) -> Env:
    memory = PhysMemory(MEM_SIZE)
    alloc = pool_allocator(memory)
    return Env(kind, memory, build_mapper(kind, memory, levels=levels), alloc)


@pytest.fixture(params=["mapped", "offset", "recursive", "mapped-5", "offset-5", "recursive-5"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The three mappers at 4 levels and at 5 (L5-10: the same clean-up one level deeper)."""
    kind, _, levels = request.param.partition("-")
    e = make_env(kind, int(levels or 4))
    yield e
    e.memory.close()


@pytest.fixture(params=["mapped", "offset", "recursive"])
def env4(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The three mappers at 4 levels: for the tests that pin the crate's frames (the C-04
    probe); their 5-level counterparts, with the level-4 tables freed too, are in
    test_la57.py (L5-10)."""
    e = make_env(request.param)
    yield e
    e.memory.close()


def c04_state(e: Env) -> None:
    """The C-04 probe: three pages mapped, then unmapped (tables stay)."""
    pages = [page4k(0x1000), page4k(0x20_0000), page4k(0xFFFF_8000_0000_0000)]
    for i, p in enumerate(pages):
        e.map(p, frame4k(0x1000_0000 + 0x1000 * i))
    assert [int(f.start_address()) for f in e.alloc.allocated] == [
        0x2000,
        0x3000,
        0x4000,
        0x5000,
        0x6000,
        0x7000,
        0x8000,
    ]
    for p in pages:
        e.unmap(p)


# -- tests ----------------------------------------------------------------------------------------


def test_m09_c01_clean_up_is_the_whole_range(env4: Env) -> None:
    """M-09 / C-01: clean_up(d) == clean_up_addr_range(page 0 ..= page 0xffff_ffff_ffff_f000, d):
    same frames freed in the same order, same memory afterwards."""
    env = env4
    other = make_env(env.kind)
    for e in (env, other):
        c04_state(e)
        e.map(page4k(0x4000_0000), frame4k(0x9000))  # keeps one subtree alive
    env.mapper.clean_up(env.alloc)
    other.mapper.clean_up_addr_range(prange(0, LAST_PAGE), other.alloc)
    assert env.freed() == other.freed() != []
    assert env.memory.read(0, MEM_SIZE) == other.memory.read(0, MEM_SIZE)


def test_c02_c05_partial_range_frees_a_completely_empty_table(env4: Env) -> None:
    """C-02.4 / C-05 (verified): range = the single page 0x3000 frees the empty P1 covering
    0x0-0x1f_ffff although the range covers one of its 512 entries."""
    env = env4
    c04_state(env)
    env.mapper.clean_up_addr_range(prange(0x3000, 0x3000), env.alloc)
    assert env.freed() == [0x4000]
    assert env.entry(0, 2) == 0
    assert env.entry(0, 3) == 0x3000 | int(P | W)  # P2 still holds the P1 of 0x20_0000


def test_c02_table_with_entries_outside_the_range_is_kept(env: Env) -> None:
    """C-02.5: "empty" means all 512 entries are 0, not just those inside the range: a P1 with a
    mapping outside the range is kept, and so are its parents."""
    env.map(page4k(0x1000), frame4k(0x9000))
    env.map(page4k(0x5000), frame4k(0xA000))
    env.unmap(page4k(0x1000))
    env.mapper.clean_up_addr_range(prange(0x1000, 0x1000), env.alloc)
    assert env.freed() == []
    assert env.mapper.translate_addr(VirtAddr(0x5000)) == PhysAddr(0xA000)


def test_c03_p4_and_leaf_frames_are_never_freed(env4: Env) -> None:
    """C-03: the level-4 table is never freed (even when empty) and leaf frames never are; a
    present mapping keeps its tables."""
    env = env4
    env.map(page4k(0x1000), frame4k(0x9000))
    env.map(page4k(0x4000_0000), frame4k(0xA000))
    env.unmap(page4k(0x4000_0000))
    env.mapper.clean_up(env.alloc)
    assert env.freed() == [0x6000, 0x5000]  # the P1 and P2 of 0x4000_0000 (P3 0x2000 shared)
    assert env.mapper.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)
    env.unmap(page4k(0x1000))
    env.mapper.clean_up(env.alloc)
    freed = env.freed()
    assert freed == [0x6000, 0x5000, 0x4000, 0x3000, 0x2000]
    assert P4_PHYS not in freed and 0x9000 not in freed and 0xA000 not in freed
    assert env.p4_used() == []


def test_c04_deallocation_order_verified_probe(env4: Env) -> None:
    """C-04 (verified) / C-05 / I-18: depth-first, ascending index, children before parents,
    lower half before upper half: the partial clean-up of page 0x3000 frees [0x4000], the full
    clean_up then frees [0x5000, 0x3000, 0x2000, 0x8000, 0x7000, 0x6000]; P4 is then empty."""
    env = env4
    c04_state(env)
    env.mapper.clean_up_addr_range(prange(0x3000, 0x3000), env.alloc)
    assert env.freed() == [0x4000]
    env.mapper.clean_up(env.alloc)
    assert env.freed() == [0x4000, 0x5000, 0x3000, 0x2000, 0x8000, 0x7000, 0x6000]
    assert env.p4_used() == []
    if env.kind == "recursive":
        assert env.memory.read_u64(P4_PHYS + 8 * R) == P4_PHYS | int(P | W)


def test_c06_entry_outside_the_range_is_not_visited(env4: Env) -> None:
    """C-06 (verified): range page 0x40_0000 does not free the empty P1 at P2 index 1."""
    env = env4
    c04_state(env)
    env.mapper.clean_up_addr_range(prange(0x40_0000, 0x40_0000), env.alloc)
    assert env.freed() == []
    assert env.entry(0x20_0000, 2) == 0x5000 | int(P | W)


def test_c07_huge_entries_are_kept_and_keep_parents(env: Env) -> None:
    """C-07 (verified): 2MiB and 1GiB entries are neither descended into nor cleared, and keep
    their parent tables alive."""
    env.map(
        Page[Size2MiB].containing_address(VirtAddr(0x20_0000)),
        PhysFrame[Size2MiB].containing_address(PhysAddr(0x20_0000)),
    )
    env.map(
        Page[Size1GiB].containing_address(VirtAddr(0x80_0000_0000)),
        PhysFrame[Size1GiB].containing_address(PhysAddr(0)),
    )
    before = env.memory.read(0, MEM_SIZE)
    env.mapper.clean_up(env.alloc)
    assert env.freed() == []
    assert env.memory.read(0, MEM_SIZE) == before


def test_c08_non_present_non_zero_entries_keep_tables(env: Env) -> None:
    """C-08 (verified) / I-05: a leaf with only BIT_11 keeps its P1, P2, P3; a non-present
    non-zero P2 entry is not descended into (its empty child table survives)."""
    env.map(page4k(0x1000), frame4k(0x9000))
    env.set_entry(0x1000, 1, F.BIT_11)
    env.map(page4k(0x4000_0000), frame4k(0xA000))  # P2 0x5000, P1 0x6000
    env.unmap(page4k(0x4000_0000))
    env.set_entry(0x4000_0000, 2, 0x6000 | int(W))  # P2[0] -> empty P1, not present
    env.mapper.clean_up(env.alloc)
    assert env.freed() == []
    assert env.entry(0x1000, 1) == int(F.BIT_11)
    assert env.entry(0x4000_0000, 2) == 0x6000 | int(W)


def test_c09_empty_range_is_a_no_op_and_no_flush(env4: Env) -> None:
    """C-09 (verified): an empty (reversed) range changes nothing; clean-up never flushes or
    returns a token."""
    env = env4
    c04_state(env)
    assert isinstance(env.mapper.tlb, RecordingTlb)
    env.mapper.tlb.log.clear()
    before = env.memory.read(0, MEM_SIZE)
    assert env.mapper.clean_up_addr_range(prange(0x5000, 0x1000), env.alloc) is None
    assert env.freed() == [] and env.memory.read(0, MEM_SIZE) == before
    assert env.mapper.clean_up(env.alloc) is None
    assert env.mapper.tlb.log == []


def test_c10_upper_half_only_range(env4: Env) -> None:
    """C-10 (verified) / I-18 (#468): the range 0xffff_8000_0000_0000 ..= last page frees only the
    tables under the upper-half P4 entries and leaves P4[0]'s subtree."""
    env = env4
    c04_state(env)
    env.map(page4k(0xFFFF_FF80_0000_0000), frame4k(0x7777_0000))  # under P4[511]
    env.unmap(page4k(0xFFFF_FF80_0000_0000))
    env.mapper.clean_up_addr_range(prange(0xFFFF_8000_0000_0000, LAST_PAGE), env.alloc)
    assert env.freed() == [0x8000, 0x7000, 0x6000, 0xB000, 0xA000, 0x9000]
    assert env.entry(0, 4) == 0x2000 | int(P | W)
    assert env.p4_used() == [0]


def test_c10_range_across_the_hole(env4: Env) -> None:
    """C-10 / I-18 (#469): a range from the lower into the upper half; sub-range starts step over
    the canonical hole (Step::forward) instead of panicking."""
    env = env4
    c04_state(env)
    env.mapper.clean_up_addr_range(prange(0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000), env.alloc)
    assert env.freed() == [0x8000, 0x7000, 0x6000]
    env.mapper.clean_up_addr_range(prange(0x20_0000, 0xFFFF_8000_0000_0000), env.alloc)
    assert env.freed() == [0x8000, 0x7000, 0x6000, 0x5000]  # P2 0x3000 still holds P1 0x4000


def test_c11_recursive_slot_is_skipped() -> None:
    """C-11 / I-17 (#264): the recursive slot r of P4 is skipped, for any r (here also r=0, where
    the whole-range clean-up starts at the recursive entry); tables are addressed through
    p3/p2/p1 of the sub-range start; the mapper still works afterwards."""
    for r in (0, 255, 256, 510, 511):
        memory = PhysMemory(MEM_SIZE)
        memory.write_u64(P4_PHYS + 8 * r, P4_PHYS | int(P | W))
        m = RecursivePageTable(memory, recursive_table_address(r), frame4k(P4_PHYS))
        alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(ALLOC_START, ALLOC_END)
        va = 0x80_0000_0000 if r == 0 else 0
        m.map_to(page4k(va), frame4k(0x9000), P | W, alloc).ignore()
        _, tok = m.unmap(page4k(va))
        tok.ignore()
        m.clean_up(alloc)
        assert [int(f.start_address()) for f in alloc.deallocated] == [0x4000, 0x3000, 0x2000]
        raws = PageTable(memory, P4_PHYS).raw_entries()
        assert [i for i, v in enumerate(raws) if v] == [r]
        m.clean_up_addr_range(prange(0, LAST_PAGE), alloc)
        assert memory.read_u64(P4_PHYS + 8 * r) == P4_PHYS | int(P | W)
        m.map_to(page4k(va), frame4k(0x9000), P | W, alloc).ignore()
        assert m.translate_addr(VirtAddr(va)) == PhysAddr(0x9000)


def test_c11_recursive_range_inside_the_recursive_slot() -> None:
    """C-11: a range entirely inside the recursive slot's 512 GiB frees nothing."""
    memory = PhysMemory(MEM_SIZE)
    memory.write_u64(P4_PHYS + 8 * R, P4_PHYS | int(P | W))
    m = RecursivePageTable(memory, recursive_table_address(R), frame4k(P4_PHYS))
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(ALLOC_START, ALLOC_END)
    base = recursive_table_address(R, 0, 0, 0).as_u64()
    m.clean_up_addr_range(prange(base, base + (1 << 39) - 0x1000), alloc)
    assert alloc.deallocated == []
    assert memory.read_u64(P4_PHYS + 8 * R) == P4_PHYS | int(P | W)


@pytest.mark.parametrize("kind", ["mapped", "offset"])
def test_c12_aliased_table_is_freed_twice(kind: str) -> None:
    """C-12: the contract is that every table frame is referenced once; an aliased empty P3
    (P4[0] and P4[1] -> the same frame) is deallocated twice; a checking allocator refuses the
    second free. The mapper itself does not detect it."""
    e = make_env(kind)
    e.map(page4k(0x1000), frame4k(0x9000))
    e.unmap(page4k(0x1000))
    e.memory.write_u64(P4_PHYS + 8, 0x2000 | int(P | W))  # alias the P3
    log = LoggingDeallocator()
    e.mapper.clean_up(log)
    assert log.log == [0x4000, 0x3000, 0x2000, 0x2000]
    e2 = make_env(kind)
    e2.map(page4k(0x1000), frame4k(0x9000))
    e2.unmap(page4k(0x1000))
    e2.memory.write_u64(P4_PHYS + 8, 0x2000 | int(P | W))
    with pytest.raises(FrameDeallocationError):
        e2.mapper.clean_up(e2.alloc)


def test_c02_base_alignment_uses_sign_truncation(env4: Env) -> None:
    """C-02.2: the table base is the range start aligned down with sign truncation; a range
    starting high in the upper half computes its sub-ranges correctly (no panic, right frees)."""
    env = env4
    va = 0xFFFF_FFFF_8000_0000 if env.kind != "recursive" else 0xFFFF_FF00_0000_0000 - 0x8000_0000
    env.map(page4k(va), frame4k(0x9000))
    env.unmap(page4k(va))
    env.mapper.clean_up_addr_range(prange(va + 0x1000, va + 0x1000), env.alloc)
    assert env.freed() == [0x4000, 0x3000, 0x2000]
    assert env.p4_used() == []


# -- cases from the crate's issues (checklist section 7, I-ids; the rest: test_mapper.py) ----------


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
    # a level-3, -2 and -1 table under each page: 3 + 3 + 3; at 5 levels each half also has a
    # level-4 table of its own (the two upper-half pages share one): 4 + 4 + 3
    assert len(env.alloc.deallocated) == (9 if env.levels == 4 else 11)
