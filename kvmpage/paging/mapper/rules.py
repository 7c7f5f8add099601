"""The checks in which `MappedPageTable` / `OffsetPageTable` and `RecursivePageTable` differ.

The crate's mappers share one algorithm but not the same checks on parent and leaf entries
(rules R-05, R-10, R-14, R-16 of docs/rules.md). Each set is a `TableRules` object with named
methods, so every difference is one method, tested by itself (tests/test_mapper_rules.py), and
`kvmpage.paging.mapper.base.TableMapper` asks its class's ``RULES`` instead of branching on a
flag.
"""

from __future__ import annotations

from kvmpage.paging.mapper.errors import PageNotMapped, ParentEntryHugePage
from kvmpage.panic import Panic

PRESENT = 1
WRITABLE = 2
HUGE_PAGE = 0x80


class TableRules:
    """The checks of `MappedPageTable` and `OffsetPageTable` (MP-03, MP-04, MP-25..MP-30)."""

    name = "mapped"

    def new_parent_flags(self, insert: int) -> int:
        """The flags a newly created parent entry gets from the insert flags (MP-04)."""
        return insert

    def check_linked_parent(self, raw: int) -> None:
        """`create_next_table`'s checks once a parent entry is linked or OR'ed (MP-04): it must
        be present and not map a huge page."""
        if not raw & PRESENT:
            raise Panic("entry should be mapped at this point")
        if raw & HUGE_PAGE:
            raise ParentEntryHugePage()

    def check_walked_parent(self, raw: int, loose: bool) -> None:
        """A parent met on the way to a page in unmap/update_flags/translate_page (MP-03, R-09):
        not present is `PageNotMapped`, huge is `ParentEntryHugePage` (``loose`` is the
        recursive mapper's relaxation, which this mapper does not have)."""
        if not raw & PRESENT:
            raise PageNotMapped()
        if raw & HUGE_PAGE:
            raise ParentEntryHugePage()

    def translate_stops_at(self, raw: int, level: int) -> bool:
        """Whether ``translate`` answers NotMapped at this entry (MP-25): not present."""
        return not raw & PRESENT

    def check_translated_leaf(self, raw: int) -> None:
        """The checks of a level-1 entry ``translate`` found (none here, MP-26)."""


class RecursiveRules(TableRules):
    """The checks of `RecursivePageTable`: R-05 (new parents are PRESENT | WRITABLE), R-10
    (update_flags, set_flags and translate_page only check parents for zero), R-14 (translate
    stops at a zero entry, not at a non-present one), R-16 (a huge level-1 entry panics)."""

    name = "recursive"

    def new_parent_flags(self, insert: int) -> int:
        return insert | PRESENT | WRITABLE

    def check_linked_parent(self, raw: int) -> None:
        if raw & HUGE_PAGE:
            raise ParentEntryHugePage()

    def check_walked_parent(self, raw: int, loose: bool) -> None:
        if loose:
            if raw == 0:
                raise PageNotMapped()
            return
        super().check_walked_parent(raw, loose)

    def translate_stops_at(self, raw: int, level: int) -> bool:
        return raw == 0

    def check_translated_leaf(self, raw: int) -> None:
        if raw & HUGE_PAGE:
            raise Panic("level 1 entry has huge page bit set")


MAPPED_RULES = TableRules()
RECURSIVE_RULES = RecursiveRules()
