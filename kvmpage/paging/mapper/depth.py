"""What differs between a 4-level and a 5-level mapper (rules L5-04..L5-06).

A mapper walks ``levels`` tables from its top-level table: 4 (the PML4, the crate's only depth,
the default) or 5 (the PML5 under CR4.LA57, an extension beyond the crate). Everything the
depth decides is one `Depth` object, so the shared engine (`kvmpage.paging.mapper.base`) asks
it instead of branching: which page and address types the mapper takes, which levels it walks,
where the canonical hole lies.

A 5-level mapper takes the 57-bit types (`kvmpage.addr.VirtAddr57`, `Page57`) and also the
48-bit ones (`VirtAddr`, `Page`): every 48-bit canonical address is canonical at 57 bits and
reaches the same tables, so that widening loses nothing. A 4-level mapper refuses the 57-bit
types with a `TypeError` (their addresses may not exist under 4-level paging).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmpage.addr import VirtAddr, VirtAddr57, _VirtAddrBase
from kvmpage.paging.page import Page, PageSize, PhysFrame, Size1GiB, Size2MiB, Size4KiB
from kvmpage.paging.page57 import Page57

_SIZES: tuple[type[PageSize], ...] = (Size4KiB, Size2MiB, Size1GiB)
#: the frame type of a leaf at each level
FRAME_OF_LEVEL: dict[int, Any] = {1: PhysFrame, 2: PhysFrame[Size2MiB], 3: PhysFrame[Size1GiB]}


@dataclass(frozen=True, eq=False)
class Depth:
    """The facts of one paging depth a mapper needs (`DEPTH4` or `DEPTH5`)."""

    #: 4 or 5
    levels: int
    #: the address type of this depth (what `identity_map` and `table_address` make)
    addr_type: type[_VirtAddrBase]
    #: the address types the mapper takes (``translate``, offsets, recursive addresses)
    addr_types: tuple[type[_VirtAddrBase], ...]
    #: the page class of this depth by leaf level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB)
    page_of_level: dict[int, Any]
    #: page class -> leaf level, for every page class the mapper takes
    leaf_levels: dict[type, int]
    #: (page class, frame class) -> leaf level, for every matching pair the mapper takes
    pair_levels: dict[tuple[type, type], int]
    #: the levels of a walk, top first: (4, 3, 2, 1) or (5, 4, 3, 2, 1)
    walk: tuple[int, ...]
    #: the shifts of the parent levels' indices, top first (the inlined 4 KiB map_to)
    parent_shifts: tuple[int, ...]
    #: the first non-canonical address: 2**47 or 2**56
    hole: int

    @property
    def top_shift(self) -> int:
        """The shift of the top-level index: 39 (PML4) or 48 (PML5)."""
        return 3 + 9 * self.levels

    def refuse_page(self, page: Any) -> None:
        """Raise the `TypeError` for a page this depth does not take (a `Page57` at 4 levels)."""
        if isinstance(page, Page57) and self.levels == 4:
            raise TypeError(
                f"{page!r} is a 57-bit page: it needs a 5-level mapper (levels=5); a 4-level "
                "mapper takes Page"
            )

    def check_addr(self, addr: Any, name: str = "addr") -> int:
        """``addr`` as an int when it is an address type this depth takes, else `TypeError`."""
        if type(addr) in self.addr_types:
            return addr._v  # type: ignore[no-any-return]
        if type(addr) is VirtAddr57:
            raise TypeError(
                f"{name} is a VirtAddr57: it needs a 5-level mapper (levels=5); a 4-level mapper "
                "takes VirtAddr"
            )
        kinds = " or ".join(t.__name__ for t in self.addr_types)
        raise TypeError(f"{name} must be a {kinds}, got {type(addr).__name__}")


def _depth(levels: int, families: tuple[Any, ...], addr_types: tuple[Any, ...]) -> Depth:
    own = families[-1]
    leaf_levels: dict[type, int] = {}
    pair_levels: dict[tuple[type, type], int] = {}
    for family in families:
        for level, size in enumerate(_SIZES, 1):
            page = family._SPECIALISED[size]
            leaf_levels[page] = level
            pair_levels[page, FRAME_OF_LEVEL[level]] = level
    return Depth(
        levels=levels,
        addr_type=addr_types[-1],
        addr_types=addr_types,
        page_of_level={level: own._SPECIALISED[size] for level, size in enumerate(_SIZES, 1)},
        leaf_levels=leaf_levels,
        pair_levels=pair_levels,
        walk=tuple(range(levels, 0, -1)),
        parent_shifts=tuple(3 + 9 * level for level in range(levels, 1, -1)),
        hole=1 << (9 * levels + 11),
    )


DEPTH4 = _depth(4, (Page,), (VirtAddr,))
DEPTH5 = _depth(5, (Page, Page57), (VirtAddr, VirtAddr57))


def depth_arg(levels: Any) -> Depth:
    """The `Depth` of ``levels``: 4 or 5 (an int, not a bool), else `TypeError` / `ValueError`."""
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be 4 or 5, got {levels!r}")
    if levels == 4:
        return DEPTH4
    if levels == 5:
        return DEPTH5
    raise ValueError(f"levels must be 4 (PML4) or 5 (PML5, CR4.LA57), got {levels}")


__all__ = ["DEPTH4", "DEPTH5", "FRAME_OF_LEVEL", "Depth", "depth_arg"]
