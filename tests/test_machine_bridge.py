"""The software mapper (`kvmpage.paging`) writing straight into guest RAM, checked by the CPU:
translations agree with tagged reads, and later edits reach the guest through the agent (the
verifier's own path: a `Session` replays walked-table edits and runs the mapper's flushes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kvmpage.addr import PhysAddr, VirtAddr
from kvmpage.machine import Batch, Machine
from kvmpage.paging import (
    BumpFrameAllocator,
    OffsetPageTable,
    Page,
    PageTableFlags,
    PhysFrame,
    Size2MiB,
    Size4KiB,
)
from kvmpage.paging.access import CpuState
from kvmpage.paging.table import PageTable
from kvmpage.verify.session import Session

pytestmark = pytest.mark.kvm

TAG = 0x7A67_0000_0000_0000
BASE = 0x0000_1000_0000_0000
F = PageTableFlags
ADDR = 0x000F_FFFF_FFFF_F000
USER_RW = int(F.PRESENT | F.WRITABLE | F.USER_ACCESSIBLE)
CPU = CpuState()


Setup = tuple[Machine, OffsetPageTable, BumpFrameAllocator[Any], Session, int]


@pytest.fixture
def setup() -> Iterator[Setup]:
    m = Machine(32 << 20)
    tables: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(0x1000, 0x40_0000, memory=m.memory)
    p4 = tables.allocate_frame()
    assert p4 is not None
    p4_phys = int(p4.start_address())
    session = Session(m, p4_phys)  # (maps the agent into the new PML4)
    mapper = OffsetPageTable(PageTable(m.memory, p4_phys), VirtAddr(0), tlb=session.tlb)
    yield m, mapper, tables, session, p4_phys
    m.close()


def _read(session: Session, va: int) -> int:
    """A CPL3 read of ``va`` after the session's pending edits and flushes; the value read."""
    result = session.run([], CPU, [va]).result(0)
    assert result.ok, str(result)
    return result.value


def _tagged_frame(m: Machine, phys: int) -> PhysFrame[Any]:
    m.memory.write_u64(phys, TAG | phys)
    return PhysFrame.from_start_address(PhysAddr(phys))


def test_mapper_layout_agrees_with_the_cpu(setup: Setup) -> None:
    m, mapper, tables, _, p4 = setup
    pages = []
    for i in range(64):
        frame = _tagged_frame(m, 0x80_0000 + ((i * 37) % 64) * 0x1000)
        page: Page[Size4KiB] = Page.containing_address(VirtAddr(BASE + i * 0x1000))
        mapper.map_to(page, frame, USER_RW, tables).ignore()  # never walked yet: no flush due
        pages.append(page)
    huge = PhysFrame[Size2MiB].from_start_address(PhysAddr(0x100_0000))
    m.memory.write_u64(0x100_0000 + 0x5000, TAG | 0x100_5000)
    hpage = Page[Size2MiB].containing_address(VirtAddr(BASE + 0x4000_0000))
    mapper.map_to(hpage, huge, USER_RW, tables).ignore()
    b = Batch()
    b.load_cr3(p4)
    idx = [b.read(int(p.start_address())) for p in pages]
    ih = b.read(BASE + 0x4000_0000 + 0x5000)
    res = m.run(b)
    for page, i in zip(pages, idx, strict=True):
        expected = mapper.translate_addr(page.start_address())
        assert expected is not None
        assert res[i].ok and res[i].value == TAG | int(expected), str(res[i])
    assert res[ih].value == TAG | 0x100_5000


def test_later_edits_reach_the_guest_through_the_agent(setup: Setup) -> None:
    m, mapper, tables, session, _ = setup
    old = _tagged_frame(m, 0x80_0000)
    new = _tagged_frame(m, 0x80_1000)
    page: Page[Size4KiB] = Page.containing_address(VirtAddr(BASE))
    mapper.map_to(page, old, USER_RW, tables).ignore()
    assert _read(session, BASE) == TAG | 0x80_0000
    # remap: unmap + map_to, as the mapper does it; the session replays the change through
    # the agent, then the mapper's two invlpg
    _, flush = mapper.unmap(page)
    flush.flush()
    mapper.map_to(page, new, USER_RW | int(F.NO_EXECUTE), tables).flush()
    assert session.tlb.pending == [("invlpg", BASE), ("invlpg", BASE)]
    assert _read(session, BASE) == TAG | 0x80_1000
    [(leaf, value)] = session.last_replayed  # one changed leaf (old -> new frame)
    assert value & ADDR == 0x80_1000 and m.memory.read_u64(leaf) & ~0x60 == value  # (+ A/D)
    assert session.last_flushes == [("invlpg", BASE), ("invlpg", BASE)]


def test_new_tables_after_the_first_run_are_linked_by_the_agent(setup: Setup) -> None:
    m, mapper, tables, session, _ = setup
    first = _tagged_frame(m, 0x80_0000)
    mapper.map_to(Page.containing_address(VirtAddr(BASE)), first, USER_RW, tables).ignore()
    assert _read(session, BASE) == TAG | 0x80_0000
    far = BASE + 0x20_0000 * 7  # same PD, a new page table
    frame = _tagged_frame(m, 0x80_2000)
    mapper.map_to(Page.containing_address(VirtAddr(far)), frame, USER_RW, tables).flush()
    mapper.tlb.flush_all()
    assert _read(session, far) == TAG | 0x80_2000
    # the PD entry that links the new table went through the agent; the table itself did not
    [(entry, value)] = session.last_replayed
    assert value & 1 and m.memory.read_u64(entry) & ~0x20 == value  # (+ A)
    assert session.last_flushes == [("invlpg", far), ("flush_all", 0)]
