"""The hottest operation inlined: `map_to` of a 4 KiB page for the offset and recursive mappers.

`map_4k_fast` does what `TableMapper.map_to_with_table_flags` does in the common case (parents
that exist and already carry the flags, or are empty), writing the same entries in the same
order; as soon as anything is unusual it returns None having changed only what the general
path would have changed too, and the caller hands over to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpage.paging.frame_alloc import FrameAllocator
from kvmpage.paging.mapper.entries import ADDRESS_MASK, ZERO_TABLE
from kvmpage.paging.mapper.errors import FrameAllocationFailed, PageAlreadyMapped
from kvmpage.paging.mapper.flush import MapperFlush
from kvmpage.paging.page import Page, PhysFrame

if TYPE_CHECKING:
    from kvmpage.paging.mapper.base import S, TableMapper


class _Given:
    """An allocator that hands out one frame already taken from the caller's allocator."""

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def allocate_frame(self) -> Any:
        frame, self._frame = self._frame, None
        return frame


def map_4k_fast(
    mapper: TableMapper,
    page: Page[S],
    frame: PhysFrame[S],
    f: int,
    insert: int,
    allocator: FrameAllocator[Any],
    new_flags: int | None,
    where: tuple[int, int, memoryview, tuple[int, ...]],
) -> MapperFlush[S] | None:
    """The common case of `map_to_with_table_flags` for a 4 KiB page, inlined.

    ``where`` is (root, end, q, shifts): the top-level table's physical address, the bound
    below which a table frame is usable, the memory as u64 words, and the index shifts of the
    parent levels ((39, 30, 21) below a PML4, (48, 39, 30, 21) below a PML5). From the root,
    each parent either exists (present, not huge, carrying the ``insert`` flags, below
    ``end``) or is empty and gets a new table with ``new_flags`` (None: do not create),
    exactly as `_create_next_table` would. Returns None as soon as anything is unusual,
    having changed only what the general path would have changed too, so the caller hands
    over to it and the result is the same.
    """
    t, end, q, shifts = where
    va = page._start
    for shift in shifts:  # levels 4, 3, 2 (5 first at 5 levels)
        i = (t >> 3) + ((va >> shift) & 511)
        e = q[i]
        if e == 0 and new_flags is not None:
            new = allocator.allocate_frame()
            if new is None:
                raise FrameAllocationFailed()
            if type(new) is not PhysFrame or new._start >= end:
                # raises exactly what the general path raises for this frame
                level = (shift - 3) // 9
                mapper._create_next_table((q, t >> 3), va, level, insert, _Given(new))
                raise AssertionError("unreachable: the general path raises here")
            t = new._start
            q[i] = t | new_flags
            q[t >> 3 : (t >> 3) + 512] = ZERO_TABLE
            continue
        t = e & ADDRESS_MASK
        if e & 0x81 != 1 or e & insert != insert or t >= end:
            return None
    i = (t >> 3) + ((va >> 12) & 511)
    if q[i] != 0:
        raise PageAlreadyMapped(frame)
    q[i] = frame._start | f
    return MapperFlush(page, mapper.tlb)
