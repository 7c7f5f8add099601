"""Flush tokens: checklist rules M-07 and M-08 (and TLB-01/TLB-02 as far as MapperFlush goes).

``map_to`` / ``unmap`` / ``update_flags`` return a `MapperFlush` naming the page; the
``set_flags_pN_entry`` methods return a `MapperFlushAll`. ``flush()`` goes to the mapper's `Tlb`
(``invlpg`` of the page's start address, TLB-01; ``flush_all`` = a CR3 reload, TLB-02), here a
`RecordingTlb` whose ``log`` records each call. No mapper method flushes by itself (M-08). A
token must be flushed or ignored exactly once; a second use raises, and dropping an unused token
warns `UnusedFlushWarning` (the crate's ``#[must_use]``).

This module turns `UnusedFlushWarning` into an error, and since the warning is raised from
``__del__`` (where Python reports it as "unraisable"), also ``PytestUnraisableExceptionWarning``:
with the first filter alone a dropped token would only be a warning in pytest's summary.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from support import NX, STRICT_FLUSH_TOKENS, P, W, build_mapper, frame4k, page4k

from kvmpage import PhysAddr, PhysMemory, VirtAddr
from kvmpage.paging import (
    MapperFlush,
    MapperFlushAll,
    Page,
    PageNotMapped,
    PhysFrame,
    PoolFrameAllocator,
    RecordingTlb,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    UnusedFlushWarning,
)

pytestmark = STRICT_FLUSH_TOKENS

MEM_SIZE = 0x20_0000  # 2 MiB, not the shared 4 MiB: the allocator hands out all of it from 0x2000


class ListTlb:
    """A custom Tlb (the protocol): anything with invlpg and flush_all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def invlpg(self, addr: VirtAddr) -> None:
        self.calls.append(f"invlpg {addr.as_u64():#x}")

    def flush_all(self) -> None:
        self.calls.append("cr3 reload")


def make_mapper(kind: str, tlb: Any = None) -> tuple[Any, PoolFrameAllocator[Size4KiB]]:
    memory = PhysMemory(MEM_SIZE)
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x2000, MEM_SIZE, memory=memory)
    return build_mapper(kind, memory, tlb=tlb), alloc


@pytest.fixture(params=["mapped", "offset", "recursive"])
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_m07_map_unmap_update_return_mapper_flush_with_page(kind: str) -> None:
    """M-07: map_to, unmap and update_flags return MapperFlush; page() (PR #525) is the page."""
    m, alloc = make_mapper(kind)
    pages: list[Any] = [
        page4k(0x5000),
        Page[Size2MiB].from_start_address(VirtAddr(0x40_0000)),
        Page[Size1GiB].from_start_address(VirtAddr(0x4000_0000)),
    ]
    frames: list[Any] = [
        frame4k(0x9000),
        PhysFrame[Size2MiB].from_start_address(PhysAddr(0x20_0000)),
        PhysFrame[Size1GiB].from_start_address(PhysAddr(0x4000_0000)),
    ]
    for page, frame in zip(pages, frames, strict=True):
        tokens = [m.map_to(page, frame, P | W, alloc), m.update_flags(page, P)]
        _, t = m.unmap(page)
        tokens.append(t)
        for tok in tokens:
            assert isinstance(tok, MapperFlush)
            assert tok.page() == page and type(tok.page()) is type(page)
            tok.ignore()
    ident = m.identity_map(frame4k(0x7000), P, alloc)
    assert isinstance(ident, MapperFlush) and ident.page() == page4k(0x7000)
    ident.ignore()


def test_m07_set_flags_pn_entry_return_mapper_flush_all(kind: str) -> None:
    """M-07: set_flags_p4/p3/p2_entry return MapperFlushAll."""
    m, alloc = make_mapper(kind)
    m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc).ignore()
    for op in (m.set_flags_p4_entry, m.set_flags_p3_entry, m.set_flags_p2_entry):
        tok = op(page4k(0x1000), P | W)
        assert isinstance(tok, MapperFlushAll)
        tok.ignore()


def test_m07_tlb01_flush_is_invlpg_of_the_page_start(kind: str) -> None:
    """M-07 / TLB-01: flush() sends one invlpg of page.start_address() to the mapper's tlb; for
    a 2MiB page that is the 2MiB page's start."""
    tlb = RecordingTlb()
    m, alloc = make_mapper(kind, tlb)
    assert m.tlb is tlb
    m.map_to(page4k(0x5000), frame4k(0x9000), P | W, alloc).flush()
    big = Page[Size2MiB].from_start_address(VirtAddr(0x40_0000))
    frame2m = PhysFrame[Size2MiB].from_start_address(PhysAddr(0x20_0000))
    m.map_to(big, frame2m, P | W, alloc).flush()
    _, tok = m.unmap(page4k(0x5000))
    tok.flush()
    assert tlb.log == [
        ("invlpg", VirtAddr(0x5000)),
        ("invlpg", VirtAddr(0x40_0000)),
        ("invlpg", VirtAddr(0x5000)),
    ]


def test_m07_tlb02_flush_all_reloads_cr3(kind: str) -> None:
    """M-07 / TLB-02: MapperFlushAll.flush_all() sends one flush_all to the mapper's tlb."""
    tlb = RecordingTlb()
    m, alloc = make_mapper(kind, tlb)
    m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc).ignore()
    m.set_flags_p4_entry(page4k(0x1000), P | W | NX).flush_all()
    assert tlb.log == [("flush_all", None)]


def test_m07_custom_tlb_and_default_tlb(kind: str) -> None:
    """M-07: any object with invlpg/flush_all can be the tlb; without one a RecordingTlb is made."""
    tlb = ListTlb()
    m, alloc = make_mapper(kind, tlb)
    m.map_to(page4k(0x3000), frame4k(0x9000), P | W, alloc).flush()
    m.set_flags_p3_entry(page4k(0x3000), P | W).flush_all()
    assert tlb.calls == ["invlpg 0x3000", "cr3 reload"]
    m2, alloc2 = make_mapper(kind)
    assert isinstance(m2.tlb, RecordingTlb)
    m2.map_to(page4k(0x3000), frame4k(0x9000), P | W, alloc2).flush()
    assert m2.tlb.log == [("invlpg", VirtAddr(0x3000))]


def test_m07_ignore_sends_nothing(kind: str) -> None:
    """M-07: ignore() consumes the token without touching the tlb."""
    tlb = RecordingTlb()
    m, alloc = make_mapper(kind, tlb)
    m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc).ignore()
    m.set_flags_p4_entry(page4k(0x1000), P | W).ignore()
    assert tlb.log == []


def test_m07_standalone_tokens() -> None:
    """M-07: MapperFlush(page) / MapperFlushAll() can be made directly (the crate's new())."""
    tok: MapperFlush[Size4KiB] = MapperFlush(page4k(0x2000))
    assert tok.page() == page4k(0x2000)
    tok.flush()
    tlb = RecordingTlb()
    MapperFlush(page4k(0x4000), tlb).flush()
    MapperFlushAll(tlb).flush_all()
    MapperFlushAll().ignore()
    assert tlb.log == [("invlpg", VirtAddr(0x4000)), ("flush_all", None)]


@pytest.mark.parametrize(
    ("first", "second"),
    [("flush", "flush"), ("flush", "ignore"), ("ignore", "flush"), ("ignore", "ignore")],
)
def test_m07_token_used_twice_raises(first: str, second: str) -> None:
    """M-07: a token is consumed by flush()/ignore() (Rust moves it); a second use raises and
    sends nothing more."""
    tlb = RecordingTlb()
    tok: MapperFlush[Size4KiB] = MapperFlush(page4k(0x1000), tlb)
    getattr(tok, first)()
    with pytest.raises(RuntimeError, match="already flushed or ignored"):
        getattr(tok, second)()
    assert len(tlb.log) == (1 if first == "flush" else 0)
    all_tok = MapperFlushAll(tlb)
    getattr(all_tok, "flush_all" if first == "flush" else "ignore")()
    with pytest.raises(RuntimeError):
        getattr(all_tok, "flush_all" if second == "flush" else "ignore")()


def test_m08_no_method_flushes_by_itself(kind: str) -> None:
    """M-08 / I-12 (#587): map_to, unmap, update_flags, set_flags, translate and clean-up never
    touch the TLB; the new mapping is visible before any flush (flushing is advisory)."""
    tlb = RecordingTlb()
    m, alloc = make_mapper(kind, tlb)
    tok = m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc)
    assert m.translate_addr(VirtAddr(0x1000)) == PhysAddr(0x9000)
    tok2 = m.update_flags(page4k(0x1000), P)
    tok3 = m.set_flags_p2_entry(page4k(0x1000), P | W)
    _, tok4 = m.unmap(page4k(0x1000))
    m.clean_up(alloc)
    assert tlb.log == []
    for t in (tok, tok2, tok4):
        t.ignore()
    tok3.ignore()


def test_m08_dropping_an_unused_token_warns() -> None:
    """M-08: dropping a token without flush()/ignore() warns UnusedFlushWarning (the crate's
    must_use lint), for MapperFlush and MapperFlushAll, including one returned by map_to."""
    m, alloc = make_mapper("offset")
    with pytest.warns(UnusedFlushWarning, match="dropped without flush"):
        MapperFlush(page4k(0x1000))
        gc.collect()
    with pytest.warns(UnusedFlushWarning, match="MapperFlushAll"):
        MapperFlushAll()
        gc.collect()
    with pytest.warns(UnusedFlushWarning, match=r"Page\[4KiB\]\(0x5000\)"):
        m.map_to(page4k(0x5000), frame4k(0x9000), P | W, alloc)
        gc.collect()
    # the mapping happened all the same
    assert m.translate_addr(VirtAddr(0x5000)) == PhysAddr(0x9000)


def test_m08_consumed_tokens_and_failed_calls_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    """M-08: a flushed or ignored token does not warn when dropped; a call that fails returns no
    token and so nothing can warn."""
    m, alloc = make_mapper("mapped")
    m.map_to(page4k(0x1000), frame4k(0x9000), P | W, alloc).flush()
    with pytest.raises(PageNotMapped):
        m.unmap(page4k(0x2000))
    gc.collect()
    assert [w for w in recwarn if issubclass(w.category, UnusedFlushWarning)] == []
