"""Layouts: a declarative description of an address space, and building it with a mapper.

A `LayoutSpec` names the mapper kind (``offset``, ``mapped`` or ``recursive``), its parameters
(physical-memory offset, recursive index), the size of physical memory and a list of
`MappingSpec` entries (virtual start, page size, count, flags, physical start or "allocate").
`build` turns it into real tables in a `PhysMemory` through the chosen mapper, checking every
mapping first so that a bad layout fails with a clear `LayoutError` before anything is written.

A layout whose CPU state has CR4.LA57 (``cpu.la57``) is a 5-level one: its addresses are
canonical at 57 bits, its slots are those of the level-5 table, and its mapper is built with
``levels=5`` (rules L5-12..L5-14).
"""

from __future__ import annotations

import mmap
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kvmpage.addr import canonicalize, is_canonical
from kvmpage.memory import PhysMemory
from kvmpage.paging import (
    MappedPageTable,
    OffsetPageTable,
    PageSize,
    PageTable,
    PageTableFlags,
    PhysFrame,
    PhysicalFrames,
    PoolFrameAllocator,
    RecursivePageTable,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    TableMapper,
    recursive_table_address,
)
from kvmpage.paging.access import CpuState
from kvmpage.paging.mapper.depth import depth_arg
from kvmpage.paging.page57 import PAGE_TYPES

MapperKind = Literal["offset", "mapped", "recursive"]
SIZE_BY_NAME: dict[str, type[PageSize]] = {"4KiB": Size4KiB, "2MiB": Size2MiB, "1GiB": Size1GiB}


#: Pages one layout may map: building costs about a microsecond per page, verifying more.
MAX_PAGES = 1 << 21


class LayoutError(ValueError):
    """A layout that cannot be built; the message names the mapping and what is wrong."""


@dataclass(frozen=True)
class MappingSpec:
    """``count`` pages of ``size`` from ``virt`` with ``flags``; ``phys`` None means allocate."""

    name: str
    virt: int
    size: type[PageSize]
    count: int
    flags: PageTableFlags
    phys: int | None = None
    #: Where the mapping was written (``"layout.toml, [[mapping]] #3"``); empty for Python specs.
    origin: str = ""

    def where(self, key: str | None = None) -> str:
        """How error messages name this mapping (and one of its keys, for a layout file)."""
        if not self.origin:
            return f"mapping {self.name!r}"
        return f"{self.origin} ({self.name})" + (f", key {key!r}" if key else "")

    @property
    def length(self) -> int:
        """Bytes covered."""
        return self.size.SIZE * self.count


@dataclass(frozen=True)
class LayoutSpec:
    """A whole address space: mapper kind and parameters, memory size, mappings."""

    name: str
    mappings: tuple[MappingSpec, ...]
    kind: MapperKind = "offset"
    memory_size: int = 64 << 20
    phys_offset: int = 0xFFFF_8880_0000_0000
    recursive_index: int | None = None
    #: Top-level slots (of the PML4, or the PML5 at 5 levels) the layout may not use (the guest
    #: agent's slot on a machine).
    reserved_p4: frozenset[int] = frozenset()
    #: Physical memory below this is left alone by the allocator (agent, firmware...).
    alloc_start: int = 0x1000
    #: The control-register state the layout is meant to run under (CR0.WP, SMEP, SMAP, NXE;
    #: CR4.LA57 makes it a 5-level layout).
    cpu: CpuState = field(default_factory=CpuState)
    #: The file the layout came from; empty for layouts written in Python.
    source: str = ""
    #: Whether the guest agent's slot (in ``reserved_p4``) was chosen by kvmpage because the
    #: layout names none (`choose_agent_slot`), rather than given with ``agent_slot = N``.
    agent_slot_chosen: bool = False


@dataclass
class BuiltLayout:
    """The result of `build`: memory with the tables in it and the mapper that wrote them."""

    spec: LayoutSpec
    memory: PhysMemory
    mapper: TableMapper
    allocator: PoolFrameAllocator[Size4KiB]
    p4_phys: int
    #: Physical start chosen for each mapping (by name), allocated or given.
    phys_of: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        """Release the memory."""
        self.memory.close()


def check(spec: LayoutSpec) -> None:
    """Raise `LayoutError` for the first inconsistent mapping (what `build` checks first).

    Each mapping is checked on its own first, in order; then overlaps, by sorting the ranges
    and sweeping once (n log n: a layout of 60,000 mappings is checked in a fraction of a
    second, where comparing every pair took minutes). An overlap is reported on the mapping
    that comes later in the layout, naming the earlier one.
    """
    if _CHECKED.get(id(spec)) is spec:  # a spec is immutable: checked once is checked
        return
    pages = sum(m.count for m in spec.mappings)
    if pages > MAX_PAGES:
        where = f"{spec.source}: " if spec.source else ""
        raise LayoutError(
            f"{where}the layout maps {pages} pages; kvmpage builds at most {MAX_PAGES} in one "
            'layout (use page_size = "largest" or larger pages)'
        )
    ranges: list[tuple[int, int, int]] = []  # (first byte, last byte, index)
    for index, m in enumerate(spec.mappings):
        ranges.append((m.virt, _check_one(spec, m), index))
    ranges.sort()
    clash: tuple[int, int] | None = None  # (later index, earlier index) of the first overlap
    reach, holder = -1, -1  # the highest last byte so far, and whose it is
    for start, last, index in ranges:
        if start <= reach:
            pair = (max(index, holder), min(index, holder))
            clash = pair if clash is None else min(clash, pair)
        if last > reach:
            reach, holder = last, index
    if clash is not None:
        m, other = spec.mappings[clash[0]], spec.mappings[clash[1]]
        other_last = other.virt + other.length - 1
        raise LayoutError(
            f"{m.where('virt')}: {m.virt:#x}..{m.virt + m.length - 1:#x} overlaps mapping "
            f"{other.name!r} ({other.virt:#x}..{other_last:#x})"
        )
    _CHECKED[id(spec)] = spec


#: Specs that passed `check`, by id (a weak reference: a spec dropped and a new one at the same
#: address is never mistaken for it).
_CHECKED: weakref.WeakValueDictionary[int, LayoutSpec] = weakref.WeakValueDictionary()


def _check_one(spec: LayoutSpec, m: MappingSpec) -> int:
    """Check one mapping on its own; returns its last virtual byte (plain integer arithmetic:
    a layout may have tens of thousands of mappings)."""
    virt, size = m.virt, m.size.SIZE
    levels = spec.cpu.levels
    hole = 1 << (9 * levels + 11)  # the first non-canonical address
    if not is_canonical(virt, levels):
        top_bit = 9 * levels + 11
        raise LayoutError(
            f"{m.where('virt')}: virtual start {virt:#x} is not canonical (bits 63..{top_bit} "
            f"must all equal bit {top_bit})"
        )
    if virt % size:
        raise LayoutError(
            f"{m.where('virt')}: virtual start {virt:#x} is not aligned to {m.size.DEBUG_STR}"
        )
    if m.count <= 0:
        raise LayoutError(f"{m.where()}: count must be at least 1, got {m.count}")
    last = virt + m.length - 1
    if last >= 1 << 64 or (virt < hole) != (last < hole) or not is_canonical(last, levels):
        raise LayoutError(f"{m.where()}: runs past the end of its canonical half")
    if m.phys is not None:
        if m.phys % size:
            raise LayoutError(
                f"{m.where('phys')}: physical start {m.phys:#x} is not aligned to "
                f"{m.size.DEBUG_STR}"
            )
        if m.phys + m.length > 1 << 52:
            raise LayoutError(f"{m.where()}: physical range goes beyond 2**52")
    flags = int(m.flags)
    if not flags & _PRESENT:
        raise LayoutError(f"{m.where('flags')}: flags must include PRESENT")
    if flags & _HUGE_PAGE:
        raise LayoutError(f"{m.where('flags')}: HUGE_PAGE is set by the page size, do not list it")
    shift = 3 + 9 * levels  # of the top-level index
    first_slot, last_slot = (virt >> shift) & 511, (last >> shift) & 511
    if spec.reserved_p4 or spec.recursive_index is not None:
        for p4 in range(first_slot, last_slot + 1):
            if p4 in spec.reserved_p4:
                raise LayoutError(
                    f"{m.where('virt')}: touches level-{levels} slot {p4} "
                    f"({canonicalize(p4 << shift, levels):#x}..+{_SLOT_SPAN[levels]}), which "
                    "is reserved for the kvmpage "
                    "guest agent (move the mapping, or give the agent another slot: "
                    "agent_slot = N at the top of a layout file)"
                )
            if p4 == spec.recursive_index:
                raise LayoutError(f"{m.where('virt')}: touches the recursive slot {p4}")
    return last


_PRESENT = int(PageTableFlags.PRESENT)
_HUGE_PAGE = int(PageTableFlags.HUGE_PAGE)


#: What one top-level entry spans, by paging levels.
_SLOT_SPAN = {4: "512G", 5: "256T"}


_check = check


def check_physical(spec: LayoutSpec, reserved: tuple[int, int] | None = None) -> None:
    """Every given physical range lies in guest memory and outside ``reserved`` (the agent's).

    Separate from `build`'s own checks because a Python layout may map beyond memory on
    purpose (the built-in layout's 1 GiB page reads open bus); a layout file may not.
    """
    for m in spec.mappings:
        if m.phys is None:
            continue
        end = m.phys + m.length
        if end > spec.memory_size:
            raise LayoutError(
                f"{m.where('phys')}: physical range {m.phys:#x}..{end - 1:#x} is outside guest "
                f"memory (0..{spec.memory_size - 1:#x}; raise 'memory' or use phys = \"allocate\")"
            )
        if reserved is not None and m.phys < reserved[1] and end > reserved[0]:
            raise LayoutError(
                f"{m.where('phys')}: physical range {m.phys:#x}..{end - 1:#x} overlaps the guest "
                f"agent's reserved memory {reserved[0]:#x}..{reserved[1] - 1:#x}"
            )


def check_page_sizes(spec: LayoutSpec, *, gbpages: bool) -> None:
    """Refuse 1 GiB mappings on a host that cannot verify them (it faults on 1 GiB pages)."""
    if gbpages:
        return
    for m in spec.mappings:
        if m.size is Size1GiB:
            raise LayoutError(
                f"{m.where('page_size')}: this host cannot verify 1GiB pages (KVM faults on them "
                'with a reserved-bit error); use "2M" or set max_page_size = "2M"'
            )


def build(
    spec: LayoutSpec, memory: PhysMemory | None = None, *, alloc_end: int | None = None
) -> BuiltLayout:
    """Write the layout's tables into ``memory`` (a new zeroed one by default).

    Tables and allocated leaf memory come from ``[spec.alloc_start, alloc_end)`` (default: the
    end of memory; a machine passes the start of the agent's reserved memory).

    Raises `LayoutError` before writing anything when the layout is inconsistent, and when the
    memory runs out of frames (then the memory is released if it was created here).
    """
    check(spec)
    own = memory is None
    mem = _fresh_memory(spec.memory_size) if memory is None else memory
    try:
        return _build(spec, mem, mem.size if alloc_end is None else alloc_end)
    except BaseException:
        if own:
            mem.close()
        raise


def _fresh_memory(size: int) -> PhysMemory:
    """Zeroed memory backed by an anonymous mapping: the kernel zero-fills pages on first touch,
    so a layout of several GiB costs only the pages its tables and probes use."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE  # as guest memory is mapped
    return PhysMemory(size, buffer=mmap.mmap(-1, size, flags=flags))


#: Linux's MAP_NORESERVE (the mmap module exports it from Python 3.13 on).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def _build(spec: LayoutSpec, memory: PhysMemory, alloc_end: int) -> BuiltLayout:
    alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
        spec.alloc_start, alloc_end, memory=memory
    )
    p4 = alloc.allocate_frame()
    if p4 is None:
        raise LayoutError(f"physical memory has no room for the level-{spec.cpu.levels} table")
    table = PageTable(memory, p4._start)
    mapper = _make_mapper(spec, memory, table, p4)
    built = BuiltLayout(spec, memory, mapper, alloc, p4._start)
    types: dict[type[PageSize], tuple[Any, Any]] = {}
    pages = PAGE_TYPES[spec.cpu.levels]  # Page, or Page57 at 5 levels
    for m in spec.mappings:
        phys = m.phys if m.phys is not None else _allocate_run(alloc, m)
        built.phys_of[m.name] = phys
        page_type, frame_type = types.get(m.size) or types.setdefault(
            m.size, (pages[m.size], cast(Any, PhysFrame)[m.size])
        )
        # check() made sure of alignment, canonical form and range: no second validation
        first = page_type._make(m.virt)
        frame = frame_type._make(phys)
        try:  # one call per mapping: the tables are exactly a map_to loop's, written in bulk
            if m.count == 1:  # the same tables, a fraction of the cost per call
                mapper.map_to(first, frame, m.flags, alloc).ignore()
            else:  # inclusive: the range may end with the last page of its half (2**47, 2**64)
                last = page_type._make(m.virt + m.length - m.size.SIZE)  # (checked, as first)
                mapper.map_range(page_type.range_inclusive(first, last), frame, m.flags, alloc
                                 ).ignore()  # fmt: skip
        except Exception as e:
            many = f"{m.count} pages from " if m.count > 1 else ""
            raise LayoutError(f"{m.where()}: {many}{first!r} -> {frame!r}: {e}") from e
    return built


def _make_mapper(
    spec: LayoutSpec, memory: PhysMemory, table: PageTable, p4: PhysFrame[Size4KiB]
) -> TableMapper:
    levels = spec.cpu.levels
    if spec.recursive_index is not None:
        table[spec.recursive_index] = p4._start | int(
            PageTableFlags.PRESENT | PageTableFlags.WRITABLE
        )
    if spec.kind == "offset":
        offset = depth_arg(levels).addr_type(spec.phys_offset)
        return OffsetPageTable(table, offset, levels=levels)  # type: ignore[arg-type]
    if spec.kind == "mapped":
        return MappedPageTable(table, PhysicalFrames(memory), levels=levels)
    if spec.kind == "recursive":
        if spec.recursive_index is None:
            raise LayoutError("a recursive layout needs a recursive_index")
        table_addr = recursive_table_address(spec.recursive_index, levels=levels)
        return RecursivePageTable(memory, table_addr, p4, levels=levels)
    raise LayoutError(f"unknown mapper kind {spec.kind!r} (offset, mapped or recursive)")


def _allocate_run(alloc: PoolFrameAllocator[Size4KiB], m: MappingSpec) -> int:
    """Contiguous, size-aligned physical memory for mapping ``m``."""
    start = alloc.allocate_contiguous(m.length, m.size.SIZE)
    if start is None:
        hint = "; raise 'memory' in the layout file" if m.origin else ""
        raise LayoutError(
            f"{m.where('length' if m.origin else None)}: no {m.length:#x} bytes of "
            f"{m.size.DEBUG_STR}-aligned physical memory left below {alloc.end:#x} for "
            f'phys = "allocate"{hint}'
        )
    return start
