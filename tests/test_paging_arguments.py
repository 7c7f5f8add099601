"""Every public entry point of the paging library checks its arguments before it changes
anything: a bad argument is a `TypeError` (wrong kind of value) or a `ValueError` (out of
range), and physical memory is byte-identical afterwards, the allocator untouched.

The issue's cases: ``map_to(page, None, ...)`` created the page's tables, then failed with an
AttributeError; flags with address bits (``1 << 40``) silently mapped another frame;
``recursive_table_address(512)`` and ``(-1)`` gave an address; a None allocator failed deep
inside. A Hypothesis test calls every mapper operation of all three mappers with one bad
argument among good ones, on an address space with mappings in it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import (
    MEM_SIZE,
    P4_PHYS,
    STRICT_FLUSH_TOKENS,
    Env,
    frame2m,
    frame4k,
    make_env,
    page2m,
    page4k,
)

from kvmpage import PhysAddr, PhysMemory, VirtAddr
from kvmpage.paging import (
    BumpFrameAllocator,
    MappedPageTable,
    OffsetPageTable,
    Page,
    PageRangeInclusive,
    PageTable,
    PageTableEntry,
    PoolFrameAllocator,
    RecursivePageTable,
    Size2MiB,
    recursive_table_address,
)
from kvmpage.paging import PageTableFlags as F

pytestmark = STRICT_FLUSH_TOKENS

KINDS = ["mapped", "offset", "recursive"]
MAPPED = 0x40_0000  # a mapped 4 KiB page (its tables exist)
FREE = 0x7F_0000_0000  # an unmapped page whose tables do not exist
PW = F.PRESENT | F.WRITABLE


class NotCallable:
    allocate_frame = 3
    deallocate_frame = "no"


def _world(kind: str) -> Env:
    e = make_env(kind)
    e.map(page4k(MAPPED), frame4k(0x20_0000), F.PRESENT)  # parents without USER / NX
    e.map(page2m(0x4000_0000), frame2m(0x20_0000), PW)
    return e


# -- bad values, by the kind of argument they replace ---------------------------------------

BAD_FLAGS: list[object] = [None, 1.5, "3", b"\x03", True, [1], -1, 1 << 64, 1 << 12, 1 << 40,
                           1 << 51, F.PRESENT | F.from_bits_retain(1 << 20)]  # fmt: skip
BAD_PAGE: list[object] = [None, MAPPED, VirtAddr(MAPPED), frame4k(0x1000), "page", 1.5]
BAD_FRAME: list[object] = [None, 0x20_0000, PhysAddr(0x20_0000), page4k(0x1000), frame2m(0x20_0000)]
BAD_ALLOCATOR: list[object] = [None, object(), 0, NotCallable(), [frame4k(0x9_0000)]]
BAD_ADDR: list[object] = [None, MAPPED, PhysAddr(MAPPED), page4k(MAPPED), "0x400000"]
BAD_RANGE: list[object] = [
    None,
    [page4k(FREE)],
    page4k(FREE),
    Page.range(page2m(0), page2m(0x40_0000)),
]
BAD_CLEAN_RANGE: list[object] = [None, Page.range(page4k(0), page4k(0x1000)),
                                 Page.range_inclusive(page2m(0), page2m(0))]  # fmt: skip

# (operation, its arguments: (name, good value, bad values) each)
Op = tuple[str, list[tuple[str, Callable[[Env], Any], list[object]]]]


def _page(e: Env) -> Any:
    return page4k(FREE)


# fmt: off
OPERATIONS: list[Op] = [
    ("map_to", [("page", _page, BAD_PAGE), ("frame", lambda e: frame4k(0x30_0000), BAD_FRAME),
                ("flags", lambda e: F.PRESENT | F.USER_ACCESSIBLE, BAD_FLAGS),
                ("frame_allocator", lambda e: e.alloc, BAD_ALLOCATOR)]),
    ("map_to_with_table_flags",
     [("page", _page, BAD_PAGE), ("frame", lambda e: frame4k(0x30_0000), BAD_FRAME),
      ("flags", lambda e: PW, BAD_FLAGS), ("parent_table_flags", lambda e: PW, BAD_FLAGS),
      ("frame_allocator", lambda e: e.alloc, BAD_ALLOCATOR)]),
    ("identity_map", [("frame", lambda e: frame4k(0x30_0000), BAD_FRAME[:-1]),
                      ("flags", lambda e: PW, BAD_FLAGS),
                      ("frame_allocator", lambda e: e.alloc, BAD_ALLOCATOR)]),
    ("map_range",
     [("pages", lambda e: Page.range(page4k(FREE), page4k(FREE + 0x3000)), BAD_RANGE),
      ("first_frame", lambda e: frame4k(0x30_0000), BAD_FRAME),
      ("flags", lambda e: PW | F.USER_ACCESSIBLE, BAD_FLAGS),
      ("frame_allocator", lambda e: e.alloc, BAD_ALLOCATOR),
      ("parent_table_flags", lambda e: PW, BAD_FLAGS[1:])]),
    ("unmap", [("page", lambda e: page4k(MAPPED), BAD_PAGE)]),
    ("update_flags", [("page", lambda e: page4k(MAPPED), BAD_PAGE),
                      ("flags", lambda e: PW, BAD_FLAGS)]),
    *(
        (name, [("page", lambda e: page4k(MAPPED), BAD_PAGE), ("flags", lambda e: PW, BAD_FLAGS)])
        for name in ("set_flags_p4_entry", "set_flags_p3_entry", "set_flags_p2_entry")
    ),
    ("translate_page", [("page", lambda e: page4k(MAPPED), BAD_PAGE)]),
    ("translate", [("addr", lambda e: VirtAddr(MAPPED), BAD_ADDR)]),
    ("translate_addr", [("addr", lambda e: VirtAddr(MAPPED), BAD_ADDR)]),
    ("clean_up", [("frame_deallocator", lambda e: e.alloc, BAD_ALLOCATOR)]),
    ("clean_up_addr_range",
     [("range", lambda e: Page.range_inclusive(page4k(0), page4k(FREE)), BAD_CLEAN_RANGE),
      ("frame_deallocator", lambda e: e.alloc, BAD_ALLOCATOR)]),
]
# fmt: on


def _state(e: Env) -> tuple[bytes, list[int], int, list[Any]]:
    return (e.memory.read(0, MEM_SIZE), e.allocated(), e.alloc.remaining(),
            list(e.mapper.tlb.log))  # fmt: skip


@settings(max_examples=250, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_bad_argument_changes_nothing(kind: str, data: st.DataObject) -> None:
    name, params = data.draw(st.sampled_from(OPERATIONS), label="operation")
    bad_at = data.draw(st.integers(0, len(params) - 1), label="bad argument")
    e = _world(kind)
    args = [good(e) for _, good, _ in params]
    args[bad_at] = data.draw(st.sampled_from(params[bad_at][2]), label=params[bad_at][0])
    before = _state(e)
    with pytest.raises((TypeError, ValueError)):
        result = getattr(e.mapper, name)(*args)
        _consume(result)
    assert _state(e) == before, f"{name} changed something before refusing {args[bad_at]!r}"


def _consume(result: Any) -> None:
    for token in result if isinstance(result, tuple) else (result,):
        if hasattr(token, "ignore"):
            token.ignore()


@pytest.mark.parametrize("kind", KINDS)
def test_the_issues_cases(kind: str) -> None:
    e = _world(kind)
    before = _state(e)
    with pytest.raises(TypeError, match="expected a PhysFrame, got NoneType"):
        e.mapper.map_to(page4k(FREE), None, PW, e.alloc)
    with pytest.raises(ValueError, match="address field"):
        e.mapper.map_to(page4k(FREE), frame4k(0x30_0000), PW | (1 << 40), e.alloc)
    with pytest.raises(TypeError, match=r"frame_allocator must have the method allocate_frame\(\)"):
        e.mapper.map_to(page4k(FREE), frame4k(0x30_0000), PW | F.USER_ACCESSIBLE, None)
    assert _state(e) == before
    # and the good call still works, the frame asked for is the frame mapped
    e.mapper.map_to(page4k(FREE), frame4k(0x30_0000), PW, e.alloc).ignore()
    assert e.mapper.translate_addr(VirtAddr(FREE + 5)) == PhysAddr(0x30_0005)


@pytest.mark.parametrize("bad", [512, -1, 1 << 40, 1.0, "1", True, None])
def test_recursive_table_address_refuses_what_is_not_an_index(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        recursive_table_address(bad)
    with pytest.raises((TypeError, ValueError)):
        recursive_table_address(5, 1, bad)
    with pytest.raises(TypeError):
        recursive_table_address(5, 1, 2, 3, 4)
    assert recursive_table_address(511, 0, 0, 1) == VirtAddr(0xFFFF_FF80_0000_1000)


def test_constructors_check_their_arguments() -> None:
    memory = PhysMemory(MEM_SIZE)
    table = PageTable(memory, P4_PHYS)
    cr3 = frame4k(P4_PHYS)
    bad_calls: list[Callable[[], Any]] = [
        lambda: MappedPageTable(None, object()),  # type: ignore[arg-type]
        lambda: MappedPageTable(table, object()),  # type: ignore[arg-type]
        lambda: MappedPageTable(table, memory, tlb=object()),  # type: ignore[arg-type]
        lambda: OffsetPageTable(None, VirtAddr(0)),  # type: ignore[arg-type]
        lambda: OffsetPageTable(table, 0),  # type: ignore[arg-type]
        lambda: OffsetPageTable(table, VirtAddr(0), tlb=3),  # type: ignore[arg-type]
        lambda: RecursivePageTable(None, recursive_table_address(510), cr3),  # type: ignore[arg-type]
        lambda: RecursivePageTable(memory, recursive_table_address(510), None),  # type: ignore[arg-type]
        lambda: RecursivePageTable.new_unchecked(None, 510, cr3),  # type: ignore[arg-type]
        lambda: RecursivePageTable.new_unchecked(memory, 510, 0x1000),  # type: ignore[arg-type]
        lambda: RecursivePageTable.new_unchecked(memory, True, cr3),
        lambda: PageTable(None, 0x1000),  # type: ignore[arg-type]
        lambda: PageTable(memory, 4096.0),  # type: ignore[arg-type]
        lambda: BumpFrameAllocator("0x1000", 0x2000),  # type: ignore[arg-type]
        lambda: BumpFrameAllocator(0x1000, 8192.5),  # type: ignore[arg-type]
        lambda: BumpFrameAllocator(0x1000, 0x2000, size=int),  # type: ignore[arg-type]
        lambda: BumpFrameAllocator(0x1000, 0x2000, memory=bytearray(8)),  # type: ignore[arg-type]
        lambda: PoolFrameAllocator(-0x1000, 0x2000),
    ]
    before = memory.read(0, MEM_SIZE)
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError)):
            call()
    assert memory.read(0, MEM_SIZE) == before


def test_allocators_check_their_arguments() -> None:
    alloc: PoolFrameAllocator[Any] = PoolFrameAllocator(0x1000, 0x10_0000)
    for length, align in ((-1, 4096), (4096, 0), (4096, 3000), (4096.0, 4096), (4096, None)):
        with pytest.raises((TypeError, ValueError)):
            alloc.allocate_contiguous(length, align)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alloc.deallocate_frame(None)  # type: ignore[arg-type]
    assert alloc.remaining() == 255 and alloc.allocated == []
    two_m: PoolFrameAllocator[Size2MiB] = PoolFrameAllocator(0, 4 << 20, size=Size2MiB)
    with pytest.raises(TypeError):
        two_m.deallocate_frame(frame4k(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.5, "3", None, True, -1, 1 << 64])
def test_entries_check_raw_values_and_flags(bad: Any) -> None:
    memory = PhysMemory(MEM_SIZE)
    table = PageTable(memory, P4_PHYS)
    table[3] = 0x5003
    entry = table[3]
    with pytest.raises((TypeError, ValueError)):
        PageTableEntry(bad)
    calls: tuple[Callable[[], object], ...] = (
        lambda: setattr(entry, "raw", bad),
        lambda: entry.set_flags(bad),
        lambda: entry.set_addr(PhysAddr(0x6000), bad),
        lambda: entry.set_frame(frame4k(0x6000), bad),
        lambda: table.__setitem__(4, bad),
    )
    for call in calls:
        with pytest.raises((TypeError, ValueError)):
            call()
    assert table.raw_entries()[3:5] == [0x5003, 0]


def test_range_checks_come_before_iteration() -> None:
    """The inclusive range of 4 KiB pages is what clean_up_addr_range takes."""
    e = _world("offset")
    before = _state(e)
    rng = PageRangeInclusive(page4k(0), page4k(0x1000))
    e.mapper.clean_up_addr_range(rng, e.alloc)
    assert _state(e) == before  # nothing empty to free there: still nothing changed
    with pytest.raises(TypeError):
        e.mapper.clean_up_addr_range(rng, None)
