"""The software mapper (`kvmpage.paging`) writing straight into guest RAM, checked by the CPU:
translations agree with tagged reads, and later edits reach the guest through the agent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kvmpage.addr import PhysAddr, VirtAddr
from kvmpage.machine import Batch, Machine, Op
from kvmpage.machine.bridge import BatchTlb, agent_writes
from kvmpage.paging import (
    BumpFrameAllocator,
    OffsetPageTable,
    Page,
    PageTableFlags,
    PhysFrame,
    Size2MiB,
    Size4KiB,
)
from kvmpage.paging.table import PageTable

pytestmark = pytest.mark.kvm

TAG = 0x7A67_0000_0000_0000
BASE = 0x0000_1000_0000_0000
F = PageTableFlags
ADDR = 0x000F_FFFF_FFFF_F000
USER_RW = int(F.PRESENT | F.WRITABLE | F.USER_ACCESSIBLE)


Setup = tuple[Machine, OffsetPageTable, BumpFrameAllocator[Any], BatchTlb, int]


@pytest.fixture
def setup() -> Iterator[Setup]:
    m = Machine(32 << 20)
    tables: BumpFrameAllocator[Size4KiB] = BumpFrameAllocator(0x1000, 0x40_0000, memory=m.memory)
    p4 = tables.allocate_frame()
    assert p4 is not None
    p4_phys = int(p4.start_address())
    tlb = BatchTlb(cr3=p4_phys)
    mapper = OffsetPageTable(PageTable(m.memory, p4_phys), VirtAddr(0), tlb=tlb)
    m.install_agent_slot(p4_phys)
    yield m, mapper, tables, tlb, p4_phys
    m.close()


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
    m, mapper, tables, tlb, p4 = setup
    old = _tagged_frame(m, 0x80_0000)
    new = _tagged_frame(m, 0x80_1000)
    page: Page[Size4KiB] = Page.containing_address(VirtAddr(BASE))
    mapper.map_to(page, old, USER_RW, tables).ignore()
    b = Batch()
    b.load_cr3(p4)
    first = b.read(BASE)
    assert m.run(b)[first].value == TAG | 0x80_0000
    # remap: unmap + map_to, as the mapper does it, replayed by the agent with its flushes
    walked = [int(f.start_address()) for f in tables.allocated]
    tlb.batch = b = Batch()
    with agent_writes(m.memory, b, walked):
        _, flush = mapper.unmap(page)
        flush.flush()
        mapper.map_to(page, new, USER_RW | int(F.NO_EXECUTE), tables).flush()
    # one changed leaf (old -> new frame), written by the agent, then the mapper's two invlpg
    assert [op for op, _, _ in b.commands()] == [Op.WRITE_PHYS, Op.INVLPG, Op.INVLPG]
    leaf = next(addr for op, addr, _ in b.commands() if op == Op.WRITE_PHYS)
    assert m.memory.read_u64(leaf) & ADDR == 0x80_0000  # old entry until the agent writes it
    again = b.read(BASE)
    assert m.run(b)[again].value == TAG | 0x80_1000


def test_new_tables_after_the_first_run_are_linked_by_the_agent(setup: Setup) -> None:
    m, mapper, tables, tlb, p4 = setup
    first = _tagged_frame(m, 0x80_0000)
    mapper.map_to(Page.containing_address(VirtAddr(BASE)), first, USER_RW, tables).ignore()
    b = Batch()
    b.load_cr3(p4)
    b.read(BASE)
    m.run(b)
    walked = [int(f.start_address()) for f in tables.allocated]
    far = BASE + 0x20_0000 * 7  # same PD, a new page table
    frame = _tagged_frame(m, 0x80_2000)
    tlb.batch = b = Batch()
    with agent_writes(m.memory, b, walked):
        mapper.map_to(Page.containing_address(VirtAddr(far)), frame, USER_RW, tables).flush()
    tlb.flush_all()
    assert [op for op, _, _ in b.commands()] == [Op.WRITE_PHYS, Op.INVLPG, Op.LOAD_CR3]
    i = b.read(far)
    assert m.run(b)[i].value == TAG | 0x80_2000
