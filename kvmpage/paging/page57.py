"""Pages of 5-level paging: `Page57`, the `Page` of 57-bit virtual addresses (rules L5-01..L5-04).

Not in the crate, which has no 5-level paging (its issue #435). The design follows the direction
its maintainers favour (PR #605): a separate address type, `kvmpage.addr.VirtAddr57`, and pages
over it, so that a 48-bit and a 57-bit page never mix by accident. ``Page57`` behaves like `Page`
in every rule (P-04..P-20) with 57 bits instead of 48: it is built from a `VirtAddr57`, its
arithmetic panics inside the 57-bit hole (``0x0100_0000_0000_0000`` up to
``0xff00_0000_0000_0000``), its Step functions and ranges jump that hole. It adds the level-5
index, `p5_index`, and takes five indices in `from_page_table_indices`.

``Page57[Size2MiB]`` and ``Page57[Size1GiB]`` are its huge pages (a subclass each, as for
`Page`). Every ``Page57`` is a `Page` (``isinstance`` holds), so code that accepts any page
accepts it; a 4-level mapper refuses it (`TypeError`), a 5-level one takes both kinds.
"""

from __future__ import annotations

from typing import Any

from kvmpage.addr import VirtAddr, VirtAddr57
from kvmpage.index import PageTableIndex
from kvmpage.paging.page import Page, S, Size1GiB, Size2MiB, Size4KiB, _specialise


class Page57(Page[S]):
    """A virtual page of size ``S`` (4 KiB when written bare) of 5-level paging (L5-02)."""

    __slots__ = ()
    _KIND = "Page57"
    _ADDR = VirtAddr57
    _LEVELS = 5

    def p5_index(self) -> PageTableIndex:
        """Index of this page in the level-5 table (bits 48..56, L5-03)."""
        return PageTableIndex((self._start >> 48) & 511)

    @classmethod
    def from_page(cls, page: Page[Any]) -> Any:
        """The same page as a `Page57` of the same size: every 48-bit canonical page is a
        57-bit canonical page too (L5-02). A `Page57` is returned as it is."""
        if not isinstance(page, Page):
            raise TypeError(f"expected a Page, got {type(page).__name__}")
        target: Any = Page57._SPECIALISED[page.SIZE_TYPE]
        return target._make(page._start)

    def to_page(self) -> Any:
        """The same page as a 48-bit `Page`; `VirtAddrNotValid` when it is not 48-bit
        canonical (it lies in the part of the space only 5-level paging reaches)."""
        VirtAddr.try_new(self._start)
        page: Any = Page._SPECIALISED[self.SIZE_TYPE]
        return page._make(self._start)

    @classmethod
    def from_page_table_indices(  # type: ignore[override]
        cls,
        p5: PageTableIndex,
        p4: PageTableIndex,
        p3: PageTableIndex,
        p2: PageTableIndex,
        p1: PageTableIndex,
    ) -> Page57[Size4KiB]:
        """The 4 KiB page with these indices; p5 >= 256 gives an upper-half page (L5-03)."""
        return cls._from_indices(Size4KiB, p5, p4, p3, p2, p1)  # type: ignore[no-any-return]

    @classmethod
    def from_page_table_indices_2mib(  # type: ignore[override]
        cls, p5: PageTableIndex, p4: PageTableIndex, p3: PageTableIndex, p2: PageTableIndex
    ) -> Page57[Size2MiB]:
        """The 2 MiB page with these indices (call on ``Page57[Size2MiB]``)."""
        return cls._from_indices(Size2MiB, p5, p4, p3, p2)  # type: ignore[no-any-return]

    @classmethod
    def from_page_table_indices_1gib(  # type: ignore[override]
        cls, p5: PageTableIndex, p4: PageTableIndex, p3: PageTableIndex
    ) -> Page57[Size1GiB]:
        """The 1 GiB page with these indices (call on ``Page57[Size1GiB]``)."""
        return cls._from_indices(Size1GiB, p5, p4, p3)  # type: ignore[no-any-return]


Page57._SPECIALISED = {Size4KiB: Page57}
for _size in (Size2MiB, Size1GiB):
    Page57._SPECIALISED[_size] = _specialise(Page57, _size)

#: the page classes of each depth, by size (the mappers' dispatch tables)
PAGE_TYPES: dict[int, dict[Any, Any]] = {
    4: dict(Page._SPECIALISED),
    5: dict(Page57._SPECIALISED),
}

__all__ = ["PAGE_TYPES", "Page57"]
