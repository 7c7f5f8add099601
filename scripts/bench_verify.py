"""End-to-end cost of verifying 1 GiB of 4 KiB mappings on this host's KVM.

Build (an OffsetPageTable in guest memory: one ``map_range``, or ``--map-to`` for 262,144
``map_to`` calls) + predict + probe (every page read once at CPL3, plus the full probe set at
CPL3 and CPL0 on every table's first page, each run's ends and a sample) + compare. Run:
``python scripts/bench_verify.py [--pages N] [--repeat K] [--map-to] [--no-cpl0]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from kvmpage import PhysAddr, VirtAddr
from kvmpage.machine import Machine
from kvmpage.memory import PhysMemory
from kvmpage.paging import (
    MappedPageTable,
    OffsetPageTable,
    Page,
    PageTable,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size4KiB,
    TableMapper,
    recursive_table_address,
)
from kvmpage.verify import PlanOptions, Verifier

FLAGS = PageTableFlags.PRESENT | PageTableFlags.WRITABLE | PageTableFlags.USER_ACCESSIBLE
BASE = 0x4000_0000
RECURSIVE_INDEX = 300


def make_mapper(
    kind: str, memory: PhysMemory, table: PageTable, p4: PhysFrame[Size4KiB]
) -> TableMapper:
    """An empty address space of ``kind`` over the level-4 ``table`` (frame ``p4``)."""
    if kind == "offset":
        return OffsetPageTable(table, VirtAddr(0))
    if kind == "mapped":
        return MappedPageTable(table, _Direct(memory))
    table[RECURSIVE_INDEX] = p4.start_address().as_u64() | int(
        PageTableFlags.PRESENT | PageTableFlags.WRITABLE
    )
    return RecursivePageTable(memory, recursive_table_address(RECURSIVE_INDEX), p4)


class _Direct:
    """Tables reached at their physical address (a `MappedPageTable` mapping)."""

    def __init__(self, memory: PhysMemory) -> None:
        self.memory = memory

    def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
        return PageTable(self.memory, frame.start_address().as_u64())


def one_run(
    pages: int, cpl0: bool, huge: bool, map_to: bool = False, kind: str = "offset"
) -> dict[str, float]:
    data = pages * 4096
    tables = (pages // 512 + 16) * 4096
    memory_size = -(-(data + tables + (64 << 20)) // (2 << 20)) * (2 << 20)
    t_start = time.perf_counter()
    with Machine(memory_size, capacity=pages + 65536, timeout=60.0, huge_pages=huge) as m:
        t_machine = time.perf_counter()
        alloc: PoolFrameAllocator[Size4KiB]
        alloc = PoolFrameAllocator(0x1000, tables, memory=m.memory)
        p4 = alloc.allocate_frame()
        assert p4 is not None
        table = PageTable(m.memory, p4.start_address())
        mapper = make_mapper(kind, m.memory, table, p4)
        if map_to:
            for i in range(pages):
                mapper.map_to(
                    Page.containing_address(VirtAddr(BASE + i * 4096)),
                    PhysFrame.containing_address(PhysAddr(tables + i * 4096)),
                    FLAGS,
                    alloc,
                ).ignore()
        else:
            first: Page[Size4KiB] = Page.containing_address(VirtAddr(BASE))
            mapper.map_range(
                Page.range(first, first + pages),
                PhysFrame.containing_address(PhysAddr(tables)),
                FLAGS,
                alloc,
            ).ignore()
        t_built = time.perf_counter()
        report = Verifier(mapper, m).verify(PlanOptions(cpl0=cpl0))
        t_done = time.perf_counter()
        assert report.ok, report.format(limit=3)
    t_closed = time.perf_counter()
    out = {
        "machine": t_machine - t_start,
        "build": t_built - t_machine,
        "verify": t_done - t_built,
        "end to end (build + verify)": t_done - t_machine,
        "machine closed": t_closed - t_done,
        "all (machine, build, verify, close)": t_closed - t_start,
    }
    out.update({f"  verify: {k}": v for k, v in report.seconds.items()})
    out["probes"] = report.probes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=262_144)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-cpl0", action="store_true", help="CPL3 probes only")
    parser.add_argument(
        "--huge-pages", action="store_true", help="guest RAM on transparent huge pages"
    )
    parser.add_argument(
        "--map-to", action="store_true", help="build with one map_to per page, not map_range"
    )
    parser.add_argument("--mapper", choices=("offset", "mapped", "recursive"), default="offset")
    args = parser.parse_args()
    warnings.simplefilter("error")
    runs = [
        one_run(args.pages, not args.no_cpl0, args.huge_pages, args.map_to, args.mapper)
        for _ in range(args.repeat)
    ]
    build = "map_to per page" if args.map_to else "one map_range"
    ram = "transparent huge pages" if args.huge_pages else "4 KiB host pages"
    cpl = "CPL3 only" if args.no_cpl0 else "CPL3 and CPL0"
    what = f"{args.mapper} mapper, {build}, {ram}, {cpl}"
    print(f"{args.pages} pages of 4 KiB ({what}), median of {args.repeat} runs:")
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key == "probes":
            print(f"  probes: {int(values[0])}")
            continue
        spread = f" (min {min(values):.3f}, max {max(values):.3f})" if len(values) > 1 else ""
        print(f"  {key}: {statistics.median(values):.3f} s{spread}")


if __name__ == "__main__":
    main()
