"""The two hottest operations inlined, `map_to` of a 4 KiB page and `translate_addr`, for the
offset and recursive mappers, at 4 and 5 levels.

`FastMapper` is the `TableMapper` both mappers derive from. Its `_map` and `translate_addr` do
what the shared engine does in the common case (parents that exist and already carry the flags,
or are empty; a walk through present tables inside memory), reading and writing the same entries
in the same order, directly on the memory's u64 words; as soon as anything is unusual they hand
over to the shared engine, having changed only what it would have changed too, so the results,
errors and flush tokens are the same. Each mapper says once, in `FastMapper._set_fast_paths`,
where its tables are and how it differs (the recursive mapper: only while its entry r points
back at the top-level table, new parents also get PRESENT | WRITABLE, only a zero entry stops
a translation, a huge level-1 entry panics).

Everything is in u64 word indices: a table at physical address ``t`` starts at word ``t >> 3``,
and ``(e >> 3) & _WORD_MASK`` is the word of the table entry ``e`` points at.
"""

from __future__ import annotations

from typing import Any

from kvmpage.addr import AnyVirtAddr, PhysAddr, VirtAddr
from kvmpage.paging.frame_alloc import FrameAllocator
from kvmpage.paging.mapper.base import TableMapper
from kvmpage.paging.mapper.entries import (
    ADDRESS_MASK,
    ADDRESS_MASK_1GIB,
    ADDRESS_MASK_2MIB,
    HUGE_PAGE,
    PRESENT,
    ZERO_TABLE,
    S,
)
from kvmpage.paging.mapper.errors import FrameAllocationFailed, PageAlreadyMapped
from kvmpage.paging.mapper.flush import MapperFlush
from kvmpage.paging.page import Page, PhysFrame

#: The address field of an entry shifted down by 3: ``(e >> 3) & _WORD_MASK`` is the word
#: index of the table (or page) that entry ``e`` points at.
_WORD_MASK = ADDRESS_MASK >> 3

FastMap = tuple[int, int, memoryview, tuple[int, ...], type, int, int, int, int]
"""What `FastMapper._map` needs: (root, end, q, shifts, page type, guard word, guard mask,
guard value, new-parent bits); see `FastMapper._set_fast_paths`."""
FastTranslate = tuple[memoryview, int, tuple[int, ...], int, int, int, type, int, int, int]
"""What `FastMapper.translate_addr` needs: (q, root, top shifts, end, stop, leaf bad bits,
address type, guard word, guard mask, guard value); see `FastMapper._set_fast_paths`."""


class _Given:
    """An allocator that hands out one frame already taken from the caller's allocator."""

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def allocate_frame(self) -> Any:
        frame, self._frame = self._frame, None
        return frame


class FastMapper(TableMapper):
    """A `TableMapper` with `map_to` of 4 KiB pages and `translate_addr` inlined.

    A subclass calls `_set_fast_paths` in its constructor; the shared engine
    (`TableMapper`) still decides everything unusual.
    """

    _fast_map: FastMap
    _fast_translate: FastTranslate

    def _set_fast_paths(
        self, q: memoryview, root: int, end: int, guard: tuple[int, int, int], stop: int,
        leaf_bad: int,
    ) -> None:  # fmt: skip
        """Say where the tables are and how this mapper differs from the common case.

        ``q``: the memory holding every table, as u64 words; ``root``: the word index of the
        top-level table; ``end``: the word index below which a table can be followed
        directly (the whole table inside memory, and whatever else the mapper needs: the
        offset mapper's canonical sums); ``guard``: (word, mask, value), the fast paths run
        only while ``q[word] & mask == value`` (the recursive mapper's entry r; (0, 0, 0)
        for always); ``stop``: the bits of which a parent entry needs one for a translation
        to go on (PRESENT: MP-25; all bits, so that only a zero entry stops: R-14);
        ``leaf_bad``: the bits a level-1 entry found by ``translate_addr`` must not have
        (HUGE_PAGE where it panics, R-16). New parents get the insert flags plus what
        ``RULES.new_parent_flags`` adds (R-05), and the fast path creates them only when
        that has PRESENT (else `_create_next_table` panics after allocating: its job).
        """
        depth = self.depth
        shifts = depth.parent_shifts
        self._fast_map = (
            root, end, q, shifts, depth.page_of_level[1], *guard,
            self.RULES.new_parent_flags(0),
        )  # fmt: skip
        self._fast_translate = (
            q, root, shifts[:-2], end, stop, leaf_bad, depth.addr_type, *guard,
        )  # fmt: skip

    def _map(
        self,
        page: Page[S],
        frame: PhysFrame[S],
        f: int,
        insert: int,
        frame_allocator: FrameAllocator[Any],
    ) -> MapperFlush[S]:
        """`TableMapper._map` of a 4 KiB page, inlined (the flags and the allocator are checked
        already): from the root, each parent either exists (present, not huge, carrying the
        ``insert`` flags, inside ``end``) or is empty and gets a new table exactly as
        `_create_next_table` would make it. Anything else goes to the shared engine."""
        w, end, q, shifts, page_type, gword, gmask, gvalue, add = self._fast_map
        kind = type(page)
        if (
            (kind is Page or kind is page_type)
            and type(frame) is PhysFrame
            and not (f | insert) & HUGE_PAGE  # (a panic or a fallback: the engine's job)
            and q[gword] & gmask == gvalue
        ):
            va = page._start
            # a usable parent: present, PS clear, all the insert flags (one comparison)
            need, want = insert | PRESENT | HUGE_PAGE, insert | PRESENT
            for shift in shifts:  # levels 4, 3, 2 (5 first at 5 levels)
                i = w + ((va >> shift) & 511)
                e = q[i]
                if e & need == want:  # the common case first: the parent exists
                    w = (e >> 3) & _WORD_MASK
                    if w < end:
                        continue
                    break
                if e or not (insert | add) & PRESENT:
                    break
                new = frame_allocator.allocate_frame()
                if new is None:
                    raise FrameAllocationFailed()
                if type(new) is not PhysFrame or new._start >> 3 >= end:
                    # raises exactly what the general path raises for this frame
                    level = (shift - 3) // 9
                    self._create_next_table((q, w), va, level, insert, _Given(new))
                    raise AssertionError("unreachable: the general path raises here")
                q[i] = new._start | insert | add
                w = new._start >> 3
                q[w : w + 512] = ZERO_TABLE
            else:
                i = w + ((va >> 12) & 511)
                if q[i]:
                    raise PageAlreadyMapped(frame)
                q[i] = frame._start | f
                return MapperFlush(page, self.tlb)
        return super()._map(page, frame, f, insert, frame_allocator)

    def translate_addr(self, addr: AnyVirtAddr) -> PhysAddr | None:
        """`TableMapper.translate_addr`, inlined for a walk through present tables inside
        ``end`` (at 4 or 5 levels); anything else goes to the shared engine: a huge level-4
        or level-5 entry (a panic), a parent to follow that is not present (the recursive
        mapper faults there), a level-1 entry with ``leaf_bad`` bits, a 57-bit address at 4
        levels (a `TypeError`)."""
        q, w, top_shifts, end, stop, leaf_bad, addr_type, gword, gmask, gvalue = (
            self._fast_translate
        )
        kind = type(addr)
        if (kind is VirtAddr or kind is addr_type) and q[gword] & gmask == gvalue:
            va = addr._v
            for shift in top_shifts:  # the level-5 (at 5 levels) and level-4 entries
                e = q[w + ((va >> shift) & 511)]
                if not e & stop:
                    return None
                w = (e >> 3) & _WORD_MASK
                if e & 0x81 != 1 or w >= end:  # PS is reserved here: the engine panics
                    return super().translate_addr(addr)
            e = q[w + ((va >> 30) & 511)]
            if not e & stop:
                return None
            if e & HUGE_PAGE:
                return PhysAddr._raw((e & ADDRESS_MASK_1GIB) | (va & 0x3FFF_FFFF))
            w = (e >> 3) & _WORD_MASK
            if not e & PRESENT or w >= end:
                return super().translate_addr(addr)
            e = q[w + ((va >> 21) & 511)]
            if not e & stop:
                return None
            if e & HUGE_PAGE:
                return PhysAddr._raw((e & ADDRESS_MASK_2MIB) | (va & 0x1F_FFFF))
            w = (e >> 3) & _WORD_MASK
            if not e & PRESENT or w >= end:
                return super().translate_addr(addr)
            e = q[w + ((va >> 12) & 511)]
            if e == 0:  # (a level-1 entry without PRESENT but not zero maps, MP-26)
                return None
            if not e & leaf_bad:
                return PhysAddr._raw((e & ADDRESS_MASK) | (va & 0xFFF))
        return super().translate_addr(addr)


__all__ = ["FastMap", "FastMapper", "FastTranslate"]
