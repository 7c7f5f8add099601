"""What the mapper modules share about raw entries and tables: bits, masks, the table pair.

The engine (`kvmpage.paging.mapper.base`), the bulk mapper (`kvmpage.paging.mapper.map_range`),
the inlined hot paths (`kvmpage.paging.mapper.fast`) and the mappers themselves all work on raw
64-bit entries. The constants and tiny helpers they have in common live here, in a module that
imports none of them, so each can import it at module level: in particular `base` imports
`map_range` and `map_range` needs these pieces, which would be an import circle if they stayed
in `base`.

The address masks come from `kvmpage.x86` (the one place the architecture's bits are written
down); the masks of a huge leaf's frame are derived from them here, once, so the hot paths use
plain module constants instead of recomputing them.
"""

from __future__ import annotations

from typing import TypeVar

from kvmpage.paging.mapper.depth import FRAME_OF_LEVEL
from kvmpage.paging.page import PageSize
from kvmpage.x86 import ADDRESS_MASK, PS, P, U, W

PRESENT = P
WRITABLE = W
USER_ACCESSIBLE = U
#: PS: a leaf at level 2 or 3 (a huge page); reserved at levels 4 and 5
HUGE_PAGE = PS
#: The flags `map_to` gives new parents and ORs into existing ones: ``flags & (P|W|U)`` (M-02).
PARENT_FLAG_MASK = PRESENT | WRITABLE | USER_ACCESSIBLE
#: The crate's panic message when a new parent or a 4 KiB leaf would get HUGE_PAGE.
HUGE_FLAG_ASSERTION = "assertion failed: !flags.contains(PageTableFlags::HUGE_PAGE)"
#: The frame address of a 2 MiB leaf (bits 21..51) and of a 1 GiB leaf (bits 30..51).
ADDRESS_MASK_2MIB = ADDRESS_MASK & ~((1 << 21) - 1)
ADDRESS_MASK_1GIB = ADDRESS_MASK & ~((1 << 30) - 1)
#: A table's worth of zero bytes, and the same as 512 zero u64 words (to clear a new table).
ZERO_BYTES = bytes(4096)
ZERO_TABLE = memoryview(ZERO_BYTES).cast("Q")

Table = tuple[memoryview, int]
"""A table as (memory as u64 words, word index of entry 0)."""

S = TypeVar("S", bound=PageSize)


def index(va: int, level: int) -> int:
    """The index into the table of ``level`` on the walk of ``va`` (9 bits)."""
    return (va >> (3 + 9 * level)) & 511


__all__ = [
    "ADDRESS_MASK",
    "ADDRESS_MASK_1GIB",
    "ADDRESS_MASK_2MIB",
    "FRAME_OF_LEVEL",
    "HUGE_FLAG_ASSERTION",
    "HUGE_PAGE",
    "PARENT_FLAG_MASK",
    "PRESENT",
    "S",
    "Table",
    "USER_ACCESSIBLE",
    "WRITABLE",
    "ZERO_BYTES",
    "ZERO_TABLE",
    "index",
]
