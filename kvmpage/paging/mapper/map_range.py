"""`map_range`: consecutive pages to consecutive frames in one call, the tables of a `map_to` loop.

Not in the crate (docs/divergences.md). It checks the whole range as the loop would see the
tables before it writes anything (`_check_range`, or `_check_range_slowly` when tables alias),
then writes a leaf table's entries as one slice (`_write_range`), creating parents exactly as
`map_to` does. The mapper's own walking steps (`TableMapper._create_next_table`,
`TableMapper._child_of`...) do the work, so the three mappers share it.
"""

from __future__ import annotations

import contextlib
import sys
from array import array
from typing import TYPE_CHECKING, Any

from kvmpage.paging.frame_alloc import FrameAllocator
from kvmpage.paging.mapper.checks import allocator_arg, flags_arg, range_arg
from kvmpage.paging.mapper.entries import (
    ADDRESS_MASK,
    FRAME_OF_LEVEL,
    HUGE_FLAG_ASSERTION,
    HUGE_PAGE,
    PARENT_FLAG_MASK,
    ZERO_BYTES,
    S,
    Table,
    index,
)
from kvmpage.paging.mapper.errors import PageAlreadyMapped
from kvmpage.paging.mapper.flush import MapperFlushAll
from kvmpage.paging.page import PageRange, PageRangeInclusive, PhysFrame
from kvmpage.panic import Panic

if TYPE_CHECKING:
    from kvmpage.paging.mapper.base import TableMapper

# for each page size: the integer whose 64-bit lanes, lowest first, hold 0, step, 2 * step, ...
_LANE_OFFSETS = {
    step: int.from_bytes(array("Q", range(0, 512 * step, step)).tobytes(), sys.byteorder)
    for step in (1 << 12, 1 << 21, 1 << 30)
}


def map_range(
    mapper: TableMapper,
    pages: PageRange[S] | PageRangeInclusive[S],
    first_frame: PhysFrame[S],
    flags: int,
    frame_allocator: FrameAllocator[Any],
    parent_table_flags: int | None = None,
) -> MapperFlushAll:
    """Map page k of ``pages`` to ``first_frame + k``, for pages of any one size.

    The tables come out byte for byte as after a loop of `map_to` over the pages (of
    `map_to_with_table_flags` when ``parent_table_flags`` is given; None means the parent
    flags `map_to` derives, ``flags & (P|W|U)``), with the same table frames taken from
    ``frame_allocator`` in the same order. It is much faster: one walk per leaf table, then
    its entries are checked and written as one slice. Not in the crate. It differs from the
    loop in four ways:

    - **Checked before anything is written.** If the loop would fail on some page for any
      reason but the allocator running out (`PageAlreadyMapped` with that page's frame,
      `ParentEntryHugePage`, a panic, a table outside memory), `map_range` raises exactly
      that error for the first such page, and has written nothing and allocated nothing.
      This includes the errors `map_to` raises only after taking a frame for a new table
      (HUGE_PAGE, or on the mapped and offset mappers a missing PRESENT, in the parent
      flags), and HUGE_PAGE in the flags of 4 KiB pages, which `map_to` raises after
      creating the parents.
    - **If the allocator runs out midway**, `FrameAllocationFailed` is raised and memory
      is exactly what the loop leaves: the pages before stay mapped, and the tables created
      on the way to the page that failed stay linked (no rollback, MP-05). The exception's
      ``pages_mapped`` is how many pages were mapped. Any other error raised once writing
      began (an allocator handing out an unusable frame) carries ``pages_mapped`` too.
      No flush token is returned then.
    - **Arguments are checked even for an empty range**: a page and frame of different
      sizes (`TypeError`), flags outside u64, parent flags with bits in the address field,
      a range across the non-canonical hole (at 2**47, or 2**56 at 5 levels), frames past
      2**52 (`ValueError`). Every page of the range is mapped, including the last page below
      the hole, where iterating the range would panic (P-17).
    - **One `MapperFlushAll`** for the whole range, also for an empty one (reloading CR3
      then is merely unnecessary).

    A `RecursivePageTable` must have its entry r pointing back at the level-4 table
    (`ValueError` otherwise). A range whose tables alias each other (a table reached
    through two entries, the recursive slot inside the range) is checked page by page, as
    the loop would see it, so it is correct but not fast.
    """
    range_arg(pages)
    level = mapper._pair_level(pages.start, first_frame)
    f = flags_arg(flags)
    insert = (
        f & PARENT_FLAG_MASK
        if parent_table_flags is None
        else flags_arg(parent_table_flags, "parent_table_flags")
    )
    allocator_arg(frame_allocator)
    n = pages.len()
    step = pages.start.SIZE
    va0 = pages.start._start
    hole = mapper.depth.hole
    if va0 < hole < va0 + n * step:
        raise ValueError(
            f"the range of {n} pages from {va0:#x} crosses the non-canonical hole at "
            f"2**{hole.bit_length() - 1}"
        )
    frame0 = first_frame._start
    if frame0 + n * step > 1 << 52:
        raise ValueError(
            f"{n} frames of {first_frame.SIZE_TYPE.DEBUG_STR} from {frame0:#x} run past "
            "the 52-bit physical address space"
        )
    if n:
        _check_range(mapper, va0, n, level, f, insert, frame0)
        _write_range(mapper, va0, n, level, f, insert, frame0, frame_allocator)
    return MapperFlushAll(mapper.tlb)


def _parent_as_map_to_leaves_it(mapper: TableMapper, raw: int, insert: int) -> int:
    """Parent entry ``raw`` as `_create_next_table` leaves it, raising what it raises, but
    without allocating: a new table's entry is given without its frame address."""
    if raw == 0:
        raw = mapper.RULES.new_parent_flags(insert)
        if raw & HUGE_PAGE:
            raise Panic(HUGE_FLAG_ASSERTION)
    elif insert and raw & insert != insert:
        raw |= insert
    mapper._check_parent(raw)
    return raw


def _check_range(
    mapper: TableMapper, va0: int, n: int, level: int, f: int, insert: int, frame0: int
) -> None:
    """Raise what a loop of `map_to` over the range would raise first (allocation failures
    aside), writing nothing: the first half of `map_range`.

    The loop's own writes cannot change what it finds further on as long as each table
    sits at one place of the tree: an existing parent only gets ``insert`` OR'ed in (the
    same for every page after the first), a missing parent becomes a new, empty table
    under which nothing can conflict, and each page has its own leaf entry. Then one walk
    per leaf table (upper levels cached) with the parents as the loop leaves them, and one
    look at the slice of leaf entries, decide. A table met at a second place of the tree
    hands over to `_check_range_slowly`.
    """
    mapper._prepare_range_walk()
    step = 1 << (3 + 9 * level)
    top = mapper._top()
    levels = mapper.levels
    # table (memory, word index) -> its place in the tree (level, va >> (3 + 9 * (level + 1)))
    places: dict[tuple[int, int], tuple[int, int]] = {(id(top[0]), top[1]): (levels, 0)}
    cached: list[tuple[int, Table | None] | None] = [None] * levels  # by level: (place, table)
    huge_flag_panics = level == 1 and f & HUGE_PAGE
    k = 0
    while k < n:
        va = va0 + k * step
        leaf = index(va, level)
        count = 1 if huge_flag_panics else min(n - k, 512 - leaf)
        t: Table | None = top
        for lvl in range(levels, level, -1):
            place = va >> (3 + 9 * lvl)  # which table of level lvl - 1 this is
            hit = cached[lvl - 1]
            if hit is not None and hit[0] == place:
                t = hit[1]
            else:
                assert t is not None
                q, b = t
                raw = q[b + index(va, lvl)]
                entry = _parent_as_map_to_leaves_it(mapper, raw, insert)
                t = None if raw == 0 else mapper._child_of(entry, va, lvl - 1)
                if t is not None:
                    at = places.setdefault((id(t[0]), t[1]), (lvl - 1, place))
                    if at != (lvl - 1, place):
                        _check_range_slowly(mapper, va0, n, level, f, insert, frame0)
                        return
                cached[lvl - 1] = (place, t)
            if t is None:
                break  # a new table: nothing under it can be in the way
        if t is not None:
            q, b = t
            a = b + leaf
            if q[a : a + count].tobytes() != ZERO_BYTES[: 8 * count]:
                j = next(j for j in range(count) if q[a + j])
                raise PageAlreadyMapped(FRAME_OF_LEVEL[level]._make(frame0 + (k + j) * step))
        if huge_flag_panics:
            raise Panic(HUGE_FLAG_ASSERTION)
        k += count


def _check_range_slowly(
    mapper: TableMapper, va0: int, n: int, level: int, f: int, insert: int, frame0: int
) -> None:
    """`_check_range` for a range whose tables alias: the loop replayed page by page on a
    copy-on-write view of the entries, where each table the loop would create is a scratch
    table of its own."""
    step = 1 << (3 + 9 * level)
    leaf_bits = f | HUGE_PAGE if level > 1 else f
    written: dict[tuple[int, int], int] = {}  # (id(memory view), word) -> value
    created: dict[tuple[int, int], Table] = {}  # the same keys -> the new table
    top = mapper._top()
    for k in range(n):
        va = va0 + k * step
        q, b = top
        for lvl in range(mapper.levels, level, -1):
            key = (id(q), b + index(va, lvl))
            raw = written.get(key)
            if raw is None:
                raw = q[key[1]]
            entry = _parent_as_map_to_leaves_it(mapper, raw, insert)
            if raw == 0:
                created[key] = (memoryview(bytearray(4096)).cast("Q"), 0)
            written[key] = entry
            q, b = created[key] if key in created else mapper._child_of(entry, va, lvl - 1)
        key = (id(q), b + index(va, level))
        raw = written.get(key)
        if (q[key[1]] if raw is None else raw) != 0:
            raise PageAlreadyMapped(FRAME_OF_LEVEL[level]._make(frame0 + k * step))
        if level == 1 and f & HUGE_PAGE:
            raise Panic(HUGE_FLAG_ASSERTION)
        written[key] = (frame0 + k * step) | leaf_bits


def _write_range(
    mapper: TableMapper,
    va0: int,
    n: int,
    level: int,
    f: int,
    insert: int,
    frame0: int,
    allocator: FrameAllocator[Any],
) -> None:
    """Map the range, leaf table by leaf table: the second half of `map_range`.

    The walk to each leaf table is the loop's walk for its first page (`_create_next_table`,
    so tables are created and OR'ed exactly as `map_to` does); the loop's walks for the
    other pages of that table find the same tables, unless the leaf table is one of its
    own parents or an entry is in use (which `_check_range` excludes, short of an
    allocator handing out a frame in use): then those pages go through `map_to` itmapper.
    """
    step = 1 << (3 + 9 * level)
    leaf_bits = f | HUGE_PAGE if level > 1 else f
    # frame | leaf_bits grows by step with the frame unless a flag bit overlaps the frames
    ramp = not leaf_bits & ADDRESS_MASK & ~(step - 1)
    done = 0
    try:
        while done < n:
            va = va0 + done * step
            leaf = index(va, level)
            count = min(n - done, 512 - leaf)
            t = mapper._top()
            above = [(id(t[0]), t[1])]
            for lvl in range(mapper.levels, level, -1):
                t = mapper._create_next_table(t, va, lvl, insert, allocator)
                above.append((id(t[0]), t[1]))
            q, b = t
            a = b + leaf
            if above[-1] in above[:-1] or q[a : a + count].tobytes() != ZERO_BYTES[: 8 * count]:
                page_type = mapper.depth.page_of_level[level]
                frame_type = FRAME_OF_LEVEL[level]
                for _ in range(count):
                    mapper._map(
                        page_type._make(va0 + done * step),
                        frame_type._make(frame0 + done * step),
                        f,
                        insert,
                        allocator,
                    ).ignore()
                    done += 1
                continue
            first = frame0 + done * step
            if ramp:
                q[a : a + count] = _ramp(first | leaf_bits, step, count)
            else:
                q[a : a + count] = array(
                    "Q", [fr | leaf_bits for fr in range(first, first + count * step, step)]
                )
            done += count
    except Exception as exc:
        with contextlib.suppress(AttributeError):  # an exception type with __slots__
            exc.pages_mapped = done  # type: ignore[attr-defined]
        raise


def _ramp(first: int, step: int, count: int) -> memoryview:
    """``count`` (<= 512) u64 words ``first``, ``first + step``, ..., each below 2**64.

    Built as one big integer, the lanes of `_LANE_OFFSETS` plus ``first`` in each of the first
    ``count`` lanes: no lane carries into the next, so the lanes are the words. Several times
    faster than an array filled from a range, whose words of 2**63 and up (NO_EXECUTE) are slow.
    """
    order = sys.byteorder  # the words are native, like the memory's "Q" view
    firsts = first.to_bytes(8, order) * count + ZERO_BYTES[: 8 * (512 - count)]
    lanes = _LANE_OFFSETS[step] + int.from_bytes(firsts, order)
    return memoryview(lanes.to_bytes(4096, order)).cast("Q")[:count]
