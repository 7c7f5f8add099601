"""Median per-operation cost of the software mapper (issue: speed of the paging model).

Run: ``python scripts/bench_paging.py`` (or ``make bench``). Prints, per mapper kind, the median
time per operation of: ``map_to`` of 4 KiB pages into existing tables, ``map_to`` that has to
create tables, ``translate_addr``, ``unmap``, and a full ``clean_up`` after unmapping 1 GiB of
4 KiB mappings; the whole ``map_range`` call that maps 1 GiB of 4 KiB pages (262,144 pages, the
same memory as the ``map_to`` loop of the first line), with its tables to create and into
existing ones; plus the bare four-level walk over a memoryview for comparison.

``--levels 5`` measures the same at 5 levels (a level-5 table on top, `Page57` pages and
`VirtAddr57` addresses in level-5 slot 0: one more table on every walk; no bare walk).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from kvmpage import PhysAddr, PhysMemory, VirtAddr, VirtAddr57
from kvmpage.paging import (
    ADDRESS_MASK,
    OffsetPageTable,
    Page,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size4KiB,
    TableMapper,
    recursive_table_address,
)
from kvmpage.paging.page57 import PAGE_TYPES
from kvmpage.paging.table import PageTable

GIB = 1 << 30
PAGES = GIB // 4096  # 262,144
FLAGS = PageTableFlags.PRESENT | PageTableFlags.WRITABLE
RECURSIVE_INDEX = 510
#: the paging depth being measured (``--levels``)
LEVELS = 4


def addr(va: int) -> Any:
    """``va`` as the address type of the depth measured (a `VirtAddr57` at 5 levels)."""
    return VirtAddr57(va) if LEVELS == 5 else VirtAddr(va)


def page(va: int) -> Any:
    """The 4 KiB page at ``va`` of the depth measured (a `Page57` at 5 levels)."""
    return PAGE_TYPES[LEVELS][Size4KiB].containing_address(addr(va))


def build(kind: str, memory: PhysMemory) -> tuple[TableMapper, PoolFrameAllocator[Size4KiB]]:
    """A fresh mapper of ``kind`` over ``memory`` with tables allocated from its first 64 MiB."""
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(0x1000, 64 << 20, memory=memory)
    top = alloc.allocate_frame()
    assert top is not None
    table = PageTable(memory, top._start)
    if kind == "offset":
        return OffsetPageTable(table, addr(0), levels=LEVELS), alloc
    table[RECURSIVE_INDEX] = top._start | 3
    table_addr = recursive_table_address(RECURSIVE_INDEX, levels=LEVELS)
    return RecursivePageTable(memory, table_addr, top, levels=LEVELS), alloc


def per_op(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the time per call of ``fn(i)`` for i < n, in µs."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def creation_cost(kind: str, frames: list[PhysFrame[Size4KiB]]) -> float:
    """Median over 7 fresh mappers of map_to where every call creates a level-1 table (µs)."""
    n = 4096
    spread = [page(0x80_0000_0000 + i * (2 << 20)) for i in range(n)]
    samples = []
    for _ in range(7):
        memory = PhysMemory(128 << 20)
        mapper, alloc = build(kind, memory)
        t0 = time.perf_counter()
        for i in range(n):
            mapper.map_to(spread[i], frames[i], FLAGS, alloc).ignore()
        samples.append((time.perf_counter() - t0) / n * 1e6)
        memory.close()
    return statistics.median(samples)


def map_range_cost(kind: str) -> tuple[float, float]:
    """Median over 5 fresh mappers of one map_range of 1 GiB of 4 KiB pages (s): creating its
    513 tables, then again into those tables once their entries are cleared."""
    base = 0x4000_0000  # virtual 1 GiB: entry 0 of the level-4 table, entry 1 of the level-3
    start = page(base)
    pages = type(start).range(start, start + PAGES)
    first: PhysFrame[Size4KiB] = PhysFrame.containing_address(PhysAddr(64 << 20))
    fresh: list[float] = []
    existing: list[float] = []
    for _ in range(5):
        memory = PhysMemory(128 << 20)
        mapper, alloc = build(kind, memory)
        t0 = time.perf_counter()
        mapper.map_range(pages, first, FLAGS, alloc).ignore()
        fresh.append(time.perf_counter() - t0)
        l2 = mapper.top_level_table().phys  # down to the level-2 table of the range
        for level in range(LEVELS, 2, -1):
            l2 = memory.read_u64(l2 + 8 * ((base >> (3 + 9 * level)) & 511)) & ADDRESS_MASK
        for i in range(512):  # what unmapping every page leaves: empty level-1 tables
            memory.zero(memory.read_u64(l2 + 8 * i) & ADDRESS_MASK, 4096)
        t0 = time.perf_counter()
        mapper.map_range(pages, first, FLAGS, alloc).ignore()
        existing.append(time.perf_counter() - t0)
        memory.close()
    return statistics.median(fresh), statistics.median(existing)


def bench(kind: str, n: int) -> dict[str, float]:
    memory = PhysMemory(128 << 20)
    mapper, alloc = build(kind, memory)
    base = 0x4000_0000  # virtual 1 GiB
    pages = [page(base + i * 4096) for i in range(PAGES)]
    frames: list[PhysFrame[Size4KiB]] = [
        PhysFrame.containing_address(PhysAddr((64 << 20) + (i % 4096) * 4096)) for i in range(PAGES)
    ]
    out: dict[str, float] = {}

    def map_one(i: int) -> None:
        mapper.map_to(pages[i], frames[i], FLAGS, alloc).ignore()

    # first pass over 1 GiB: creates one level-1 table every 512 pages
    t0 = time.perf_counter()
    for i in range(PAGES):
        map_one(i)
    out["map_to 4KiB, 1 GiB fresh (incl. table creation), per page"] = (
        (time.perf_counter() - t0) / PAGES * 1e6
    )
    out["map_to 4KiB creating a level-1 table each"] = creation_cost(kind, frames)
    addrs = [addr(base + i * 4096 + 0x123) for i in range(PAGES)]
    out["translate_addr"] = per_op(lambda i: mapper.translate_addr(addrs[i]), n, 5)
    out["translate"] = per_op(lambda i: mapper.translate(addrs[i]), n, 5)
    t0 = time.perf_counter()
    for i in range(PAGES):
        mapper.unmap(pages[i])[1].ignore()
    out["unmap 4KiB"] = (time.perf_counter() - t0) / PAGES * 1e6
    out["map_to 4KiB into existing tables"] = per_op(map_one, n, 1)
    for i in range(n):
        mapper.unmap(pages[i])[1].ignore()
    t0 = time.perf_counter()
    mapper.clean_up(alloc)
    out["clean_up after 1 GiB of 4KiB mappings (whole call, ms)"] = (time.perf_counter() - t0) * 1e3
    memory.close()
    fresh, existing = map_range_cost(kind)
    out["map_range 1 GiB of 4KiB pages, fresh (whole call, s)"] = fresh
    out["map_range 1 GiB of 4KiB pages, into existing tables (whole call, s)"] = existing
    return out


def bare_walk(n: int) -> float:
    """A loop that does nothing but the four-level walk, on the offset mapper's tables."""
    memory = PhysMemory(128 << 20)
    mapper, alloc = build("offset", memory)
    base = 0x4000_0000
    for i in range(n):
        mapper.map_to(
            Page.containing_address(VirtAddr(base + i * 4096)),
            PhysFrame.containing_address(PhysAddr((64 << 20) + i * 4096)),
            FLAGS,
            alloc,
        ).ignore()
    q = memory._q
    root = mapper.level_4_table().phys >> 3
    vas = [base + i * 4096 + 0x123 for i in range(n)]
    mask = ADDRESS_MASK

    def walk(i: int) -> int:
        va = vas[i]
        e = q[root + ((va >> 39) & 511)]
        e = q[((e & mask) >> 3) + ((va >> 30) & 511)]
        e = q[((e & mask) >> 3) + ((va >> 21) & 511)]
        e = q[((e & mask) >> 3) + ((va >> 12) & 511)]
        return (e & mask) | (va & 0xFFF)

    result = per_op(walk, n, 5)
    memory.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="operations per timed sample")
    parser.add_argument(
        "--levels", type=int, choices=(4, 5), default=4, help="paging depth (default 4)"
    )
    args = parser.parse_args()
    global LEVELS
    LEVELS = args.levels
    warnings.simplefilter("error")
    if LEVELS == 4:
        print(f"bare four-level walk on a memoryview: {bare_walk(args.n):.2f} µs/address")
    else:
        print("5-level mappers (CR4.LA57): a level-5 table on top, Page57 pages")
    for kind in ("offset", "recursive"):
        for name, value in bench(kind, args.n).items():
            if name.endswith(", s)"):
                print(f"{kind:9s} {name}: {value:.4f}")
            else:
                unit = "" if "ms" in name else " µs"
                print(f"{kind:9s} {name}: {value:.2f}{unit}")


if __name__ == "__main__":
    main()
