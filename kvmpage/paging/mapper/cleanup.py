"""`CleanUp`: freeing the page tables that became empty (C-01..C-12), shared by the mappers.

The same recursion at 4 and 5 levels (L5-10): a level-4 table that becomes empty is freed like
any other, and only the top-level table is always kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpage.addr import canonicalize
from kvmpage.paging.frame_alloc import FrameDeallocator
from kvmpage.paging.mapper.entries import ADDRESS_MASK, HUGE_PAGE, PRESENT, Table
from kvmpage.paging.mapper.entries import index as _index
from kvmpage.paging.page import PhysFrame

if TYPE_CHECKING:
    from kvmpage.paging.mapper.base import TableMapper


def clean(
    mapper: TableMapper,
    table: Table,
    level: int,
    start: int,
    end: int,
    dealloc: FrameDeallocator[Any],
) -> bool:
    """Free the empty tables below ``table`` (of ``level``) that cover ``start..=end``; whether
    ``table`` is empty afterwards (its caller then frees it)."""
    if start > end:
        return False
    q, b = table
    if level > 1:
        levels = mapper.levels
        span = 1 << (12 + 9 * (level - 1))
        base = canonicalize(start & ~((span << 9) - 1), levels)
        for i in range(_index(start, level), _index(end, level) + 1):
            raw = q[b + i]
            if not raw & PRESENT or raw & HUGE_PAGE or mapper._skip_in_clean_up(level, i):
                continue
            # the entry's first address: in the top table this jumps the hole (#468), as the
            # crate's VirtAddr::forward does; below it, base + i * span is canonical already
            sub = canonicalize(base + i * span, levels)
            sub_start = max(sub, start)
            sub_end = min(sub + span - 1 & ~0xFFF, end)
            child = mapper._child(raw, sub_start, level - 1)
            if clean(mapper, child, level - 1, sub_start, sub_end, dealloc):
                q[b + i] = 0
                dealloc.deallocate_frame(PhysFrame._make(raw & ADDRESS_MASK))
    return not any(q[b : b + 512])
