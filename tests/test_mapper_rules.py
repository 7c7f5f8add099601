"""The checks in which the mappers differ, one named rule at a time (`kvmpage.paging.mapper.rules`;
the rule ids are docs/rules.md's). The mappers' own tests check them in context."""

from __future__ import annotations

import pytest

from kvmpage.paging import MappedPageTable, OffsetPageTable, RecursivePageTable
from kvmpage.paging.mapper.errors import PageNotMapped, ParentEntryHugePage
from kvmpage.paging.mapper.rules import MAPPED_RULES, RECURSIVE_RULES
from kvmpage.panic import Panic

P, W, U, H = 1, 2, 4, 0x80
TABLE = 0x5000


def test_each_mapper_has_its_rules() -> None:
    assert MappedPageTable.RULES is MAPPED_RULES and OffsetPageTable.RULES is MAPPED_RULES
    assert RecursivePageTable.RULES is RECURSIVE_RULES


def test_new_parents_mp04_and_r05() -> None:
    assert MAPPED_RULES.new_parent_flags(P | U) == P | U  # the insert flags, as given (MP-04)
    assert RECURSIVE_RULES.new_parent_flags(U) == P | W | U  # always PRESENT | WRITABLE


def test_a_linked_parent_must_be_present_except_for_the_recursive_mapper() -> None:
    with pytest.raises(Panic, match="entry should be mapped at this point"):
        MAPPED_RULES.check_linked_parent(TABLE)  # linked without PRESENT
    RECURSIVE_RULES.check_linked_parent(TABLE)  # (its new parents are always present)
    for rules in (MAPPED_RULES, RECURSIVE_RULES):
        with pytest.raises(ParentEntryHugePage):
            rules.check_linked_parent(TABLE | P | H)
        rules.check_linked_parent(TABLE | P)


@pytest.mark.parametrize("loose", [False, True])
def test_walked_parents_mp03_r09_and_r10(loose: bool) -> None:
    with pytest.raises(PageNotMapped):
        MAPPED_RULES.check_walked_parent(TABLE, loose)  # not present: not mapped
    with pytest.raises(ParentEntryHugePage):
        MAPPED_RULES.check_walked_parent(TABLE | P | H, loose)
    if loose:  # update_flags, set_flags, translate_page only look for zero
        RECURSIVE_RULES.check_walked_parent(TABLE, loose)
        RECURSIVE_RULES.check_walked_parent(TABLE | P | H, loose)
        with pytest.raises(PageNotMapped):
            RECURSIVE_RULES.check_walked_parent(0, loose)
    else:  # unmap checks as the mapped mapper does
        with pytest.raises(PageNotMapped):
            RECURSIVE_RULES.check_walked_parent(TABLE, loose)


def test_translate_mp25_and_r14_r16() -> None:
    assert MAPPED_RULES.translate_stops_at(TABLE, 3)  # not present
    assert not RECURSIVE_RULES.translate_stops_at(TABLE, 3)  # only zero stops it
    assert RECURSIVE_RULES.translate_stops_at(0, 3)
    MAPPED_RULES.check_translated_leaf(TABLE | P | H)  # PAT, not PS, at level 1
    with pytest.raises(Panic, match="level 1 entry has huge page bit set"):
        RECURSIVE_RULES.check_translated_leaf(TABLE | P | H)
