"""What each mapper operation leaves behind when it fails, exactly as docs/divergences.md
states it ("What a failed operation leaves behind"), on all three mappers: the memory after the
error is compared byte for byte with the memory before plus the writes the statement lists,
and the allocator with the frames it lists.

In short: a bad argument changes nothing; map_to keeps what its walk did before the error
(tables created and linked, parent flags OR'ed: no rollback, like the crate, MP-05); unmap,
update_flags, set_flags_p*_entry, translate_page and the translations change nothing; clean_up
keeps what it freed before the deallocator failed, and the failing table's entry is cleared
without its frame being given back."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
from support import (
    MEM_SIZE,
    STRICT_FLUSH_TOKENS,
    Env,
    frame2m,
    frame4k,
    idx,
    make_env,
    page2m,
    page4k,
)

from kvmpage.memory import PhysMemoryError
from kvmpage.paging import (
    FrameAllocationFailed,
    FrameDeallocationError,
    InvalidFrameAddress,
    PageAlreadyMapped,
    PageNotMapped,
    ParentEntryHugePage,
    PhysFrame,
    PoolFrameAllocator,
    Size4KiB,
    SoftPageFault,
)
from kvmpage.paging import PageTableFlags as F
from kvmpage.panic import Panic

pytestmark = STRICT_FLUSH_TOKENS

KINDS = ["mapped", "offset", "recursive"]
P, W, U, H, NX = (int(f) for f in (F.PRESENT, F.WRITABLE, F.USER_ACCESSIBLE, F.HUGE_PAGE,
                                  F.NO_EXECUTE))  # fmt: skip
BASE = 0x40_0000  # a 4 KiB page mapped P|W by every test: PML4E, PDPTE, PDE exist without U
OTHER_GIB = 0x40_0000 + (1 << 30)  # same PML4E, another PDPTE (empty)


def world(kind: str) -> Env:
    e = make_env(kind)
    e.map(page4k(BASE), frame4k(0x20_0000), F.PRESENT | F.WRITABLE)
    return e


def expected(
    before: bytes,
    writes: Mapping[int, int] | None = None,
    zeroed: Iterable[int] = (),
) -> bytes:
    """``before`` with the u64 ``writes`` (physical address -> value) and the 4 KiB tables at
    ``zeroed`` set to zero."""
    out = bytearray(before)
    for table in zeroed:
        out[table : table + 4096] = bytes(4096)
    for addr, value in (writes or {}).items():
        struct.pack_into("<Q", out, addr, value)
    return bytes(out)


def memory(e: Env) -> bytes:
    return e.memory.read(0, MEM_SIZE)


def new_parent(kind: str, insert: int) -> int:
    """The flags a new table's entry gets: the parent flags (recursive: | P | W, R-05)."""
    return insert | P | W if kind == "recursive" else insert


class Limited:
    """An allocator with ``n`` frames from a fresh range, then None."""

    def __init__(self, n: int, start: int = 0x30_0000) -> None:
        self.pool: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(start, start + 4096 * n)

    def allocate_frame(self) -> PhysFrame[Size4KiB] | None:
        return self.pool.allocate_frame()


class Giving:
    """An allocator that hands out what it was given, in order."""

    def __init__(self, *frames: Any) -> None:
        self.frames = list(frames)
        self.taken: list[Any] = []

    def allocate_frame(self) -> Any:
        frame = self.frames.pop(0)
        self.taken.append(frame)
        return frame


# -- map_to ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_allocation_failure_keeps_the_tables_made_and_the_flags_ored(kind: str) -> None:
    """OR U into the PML4E, make a level-2 table under a new PDPTE, then run out."""
    e = world(kind)
    e.memory.write(0x30_0000, b"\xa5" * 8192)  # the new table is zeroed, whatever it held
    before = memory(e)
    alloc = Limited(1)
    with pytest.raises(FrameAllocationFailed):
        e.mapper.map_to(page4k(OTHER_GIB), frame4k(0x21_0000), P | W | U, alloc)
    pml4e = e.entry_pa(OTHER_GIB, 4)
    new = 0x30_0000
    assert memory(e) == expected(
        before,
        {pml4e: _raw(before, pml4e) | U,
         e.entry_pa(OTHER_GIB, 3): new | new_parent(kind, P | W | U)},
        zeroed=[new],
    )  # fmt: skip
    assert [f.start_address().as_u64() for f in alloc.pool.allocated] == [new]


def _raw(mem: bytes, addr: int) -> int:
    return int(struct.unpack_from("<Q", mem, addr)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_page_already_mapped_keeps_the_flags_ored_into_its_parents(kind: str) -> None:
    e = world(kind)
    before = memory(e)
    with pytest.raises(PageAlreadyMapped):
        e.mapper.map_to(page4k(BASE), frame4k(0x21_0000), P | W | U, e.alloc)
    writes = {e.entry_pa(BASE, lvl): _raw(before, e.entry_pa(BASE, lvl)) | U for lvl in (4, 3, 2)}
    assert memory(e) == expected(before, writes)
    assert len(e.alloc.allocated) == 3  # the three tables of BASE, nothing more


@pytest.mark.parametrize("kind", KINDS)
def test_parent_entry_huge_page_keeps_the_flags_ored_even_into_the_huge_entry(kind: str) -> None:
    e = world(kind)
    huge = 0x4000_0000 + (2 << 20)  # a 2 MiB page in the second GiB, then a 4 KiB page in it
    e.map(page2m(huge), frame2m(0x40_0000), F.PRESENT | F.WRITABLE)
    before = memory(e)
    taken = len(e.alloc.allocated)
    with pytest.raises(ParentEntryHugePage):
        e.mapper.map_to(page4k(huge + 0x5000), frame4k(0x21_0000), P | W | U, e.alloc)
    writes = {e.entry_pa(huge, lvl): _raw(before, e.entry_pa(huge, lvl)) | U for lvl in (4, 3, 2)}
    assert memory(e) == expected(before, writes)
    assert len(e.alloc.allocated) == taken


@pytest.mark.parametrize("kind", KINDS)
def test_huge_page_flag_on_a_4k_page_panics_after_the_tables_are_made(kind: str) -> None:
    e = world(kind)
    before = memory(e)
    alloc = Limited(3)
    with pytest.raises(Panic, match="HUGE_PAGE"):
        e.mapper.map_to(page4k(OTHER_GIB), frame4k(0x21_0000), P | W | H, alloc)
    pd, pt = 0x30_0000, 0x30_1000
    assert memory(e) == expected(
        before,
        {e.entry_pa(OTHER_GIB, 3): pd | new_parent(kind, P | W),
         pd + 8 * idx(OTHER_GIB, 2): pt | new_parent(kind, P | W)},
        zeroed=[pd, pt],
    )  # fmt: skip
    assert len(alloc.pool.allocated) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_an_allocator_handing_out_a_huge_frame_keeps_it_taken(kind: str) -> None:
    e = world(kind)
    before = memory(e)
    giving = Giving(frame2m(0x60_0000))
    with pytest.raises(TypeError, match="not a 4 KiB PhysFrame"):
        e.mapper.map_to(page4k(OTHER_GIB), frame4k(0x21_0000), P | W | U, giving)
    pml4e = e.entry_pa(OTHER_GIB, 4)
    assert memory(e) == expected(before, {pml4e: _raw(before, pml4e) | U})
    assert giving.taken == [frame2m(0x60_0000)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_table_outside_memory(kind: str) -> None:
    """Offset and recursive check a new table's frame before linking it; mapped trusts its
    frame mapping like the crate and fails in frame_to_pointer, after the link."""
    e = world(kind)
    before = memory(e)
    outside = frame4k(MEM_SIZE + 0x1000)
    with pytest.raises(PhysMemoryError):
        e.mapper.map_to(page4k(OTHER_GIB), frame4k(0x21_0000), P | W, Giving(outside))
    pdpte = e.entry_pa(OTHER_GIB, 3)
    linked = {pdpte: (MEM_SIZE + 0x1000) | P | W} if kind == "mapped" else {}
    assert memory(e) == expected(before, linked)


@pytest.mark.parametrize("kind", ["mapped", "offset"])
def test_parent_flags_without_present_panic_with_the_entry_written(kind: str) -> None:
    e = world(kind)
    e.memory.write(0x30_0000, b"\xa5" * 4096)  # linked but not zeroed: it keeps what it held
    before = memory(e)
    with pytest.raises(Panic, match="entry should be mapped at this point"):
        e.mapper.map_to_with_table_flags(page4k(OTHER_GIB), frame4k(0x21_0000), P | W, W,
                                         Limited(3))  # fmt: skip
    assert memory(e) == expected(before, {e.entry_pa(OTHER_GIB, 3): 0x30_0000 | W})


def test_a_soft_page_fault_keeps_the_flags_ored_above_it() -> None:
    """Recursive: a non-present (non-zero) PDPTE on the way; parent flags without PRESENT are
    OR'ed into it, then the recursive address of the table below faults."""
    e = world("recursive")
    pdpte = e.entry_pa(BASE, 3)
    e.memory.write_u64(pdpte, e.memory.read_u64(pdpte) & ~P)
    before = memory(e)
    with pytest.raises(SoftPageFault):
        e.mapper.map_to_with_table_flags(page4k(BASE + 0x1000), frame4k(0x21_0000), P | W,
                                         W | U, e.alloc)  # fmt: skip
    writes = {e.entry_pa(BASE, 4): _raw(before, e.entry_pa(BASE, 4)) | U,
              pdpte: _raw(before, pdpte) | U}  # fmt: skip
    assert memory(e) == expected(before, writes)


# -- the operations that change nothing when they fail ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_failing_unmap_update_set_flags_and_translate_page_change_nothing(kind: str) -> None:
    e = world(kind)
    e.map(page2m(0x4000_0000), frame2m(0x40_0000), F.PRESENT | F.WRITABLE)
    before = memory(e)
    m = e.mapper
    failing: list[tuple[type[Exception], Callable[[], object]]] = [
        (PageNotMapped, lambda: m.unmap(page4k(OTHER_GIB + 0x20_0000))),
        (ParentEntryHugePage, lambda: m.unmap(page4k(0x4000_0000))),
        (PageNotMapped, lambda: m.update_flags(page4k(BASE + 0x1000), P)),
        (ParentEntryHugePage, lambda: m.set_flags_p2_entry(page2m(0x4000_0000), P)),
        (PageNotMapped, lambda: m.set_flags_p3_entry(page4k(0x7F_0000_0000), P)),
        (PageNotMapped, lambda: m.translate_page(page4k(BASE + 0x1000))),
    ]
    misaligned = 0x4000_0000 + (4 << 20)  # a 2 MiB leaf whose frame is not 2 MiB aligned
    e.memory.write_u64(e.entry_pa(misaligned, 2), 0x20_1000 | P | W | H)
    before = memory(e)
    failing.append((InvalidFrameAddress, lambda: m.unmap(page2m(misaligned))))
    failing.append((InvalidFrameAddress, lambda: m.translate_page(page2m(misaligned))))
    if kind != "recursive":  # the recursive mapper only checks for raw == 0 there
        failing.append((ParentEntryHugePage, lambda: m.update_flags(page4k(0x4000_1000), P)))
    for error, call in failing:
        with pytest.raises(error):
            call()
        assert memory(e) == before, error


# -- clean_up ----------------------------------------------------------------------------------


class Refusing:
    """A deallocator that takes ``n`` frames (into ``pool``) and refuses the next."""

    def __init__(self, pool: PoolFrameAllocator[Size4KiB], n: int) -> None:
        self.pool, self.n, self.given = pool, n, []  # type: ignore[var-annotated]

    def deallocate_frame(self, frame: PhysFrame[Size4KiB]) -> None:
        if len(self.given) == self.n:
            raise FrameDeallocationError("refused")
        self.pool.deallocate_frame(frame)
        self.given.append(frame)


@pytest.mark.parametrize("kind", KINDS)
def test_clean_up_keeps_what_it_freed_and_clears_the_refused_entry(kind: str) -> None:
    """Unmapping BASE leaves its PT, PD and PDPT empty. clean_up frees the PT (entry cleared,
    frame given back), then clears the PD's entry and is refused its frame: the PD's frame is
    lost to the allocator, the PDPT (visited after) is untouched."""
    e = world(kind)
    e.mapper.unmap(page4k(BASE))[1].ignore()
    pdpte, pde = e.entry_pa(BASE, 3), e.entry_pa(BASE, 2)
    pd, pt = _raw(memory(e), pdpte) & 0xF_FFFF_FFFF_F000, _raw(memory(e), pde) & 0xF_FFFF_FFFF_F000
    before = memory(e)
    refusing = Refusing(e.alloc, 1)
    with pytest.raises(FrameDeallocationError):
        e.mapper.clean_up(refusing)
    assert memory(e) == expected(before, {pde: 0, pdpte: 0})
    assert [f.start_address().as_u64() for f in refusing.given] == [pt]
    assert e.alloc.in_use() == 2  # the PDPT, and the PD's frame, never given back
    assert pd not in [f.start_address().as_u64() for f in refusing.given]


def test_the_statement_is_in_the_docs() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "divergences.md").read_text()
    assert "## What a failed operation leaves behind" in text
    for phrase in ("FrameAllocationFailed", "ParentEntryHugePage", "PageAlreadyMapped",
                   "clean_up", "nothing is changed"):  # fmt: skip
        assert phrase in text
