"""The permission model, against hand-worked cases from the SDM rules (no KVM needed)."""

from __future__ import annotations

import pytest

from kvmpage import PhysMemory
from kvmpage.paging.access import (
    PF_I,
    PF_P,
    PF_RSVD,
    PF_U,
    PF_W,
    VECTOR_GP,
    VECTOR_PF,
    AccessKind,
    CpuState,
    Features,
    evaluate,
    reserved_mask,
)
from kvmpage.paging.walk import walk

R, W, X = AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH
P, RW, US, PS, NX = 1, 2, 4, 0x80, 1 << 63
VA = 0x0000_1234_5678_9ABC
TABLE = P | RW | US  # a permissive upper-level entry


def walk4(leaf: int, *, upper: int = TABLE) -> list[int]:
    """A 4 KiB walk: three table entries and ``leaf`` (frame 0x5000)."""
    return [upper | 0x1000, upper | 0x2000, upper | 0x3000, 0x5000 | leaf]


def code(outcome) -> int:  # type: ignore[no-untyped-def]
    assert outcome.fault is not None, outcome
    assert outcome.fault.vector == VECTOR_PF
    assert outcome.fault.cr2 == VA
    return outcome.fault.error_code  # type: ignore[no-any-return]


def test_read_through_writable_user_page_succeeds_and_sets_accessed_everywhere() -> None:
    out = evaluate(walk4(P | RW | US), VA, access=R, cpl=3)
    assert out.ok and out.phys == 0x5000 | (VA & 0xFFF) and out.page_size == 4096
    assert out.a_must == {4, 3, 2, 1} and out.d_must == frozenset() and out.a_may == frozenset()


def test_write_sets_dirty_on_the_leaf_only() -> None:
    out = evaluate(walk4(P | RW | US), VA, access=W, cpl=3)
    assert out.ok and out.d_must == {1}


@pytest.mark.parametrize(
    ("level", "access", "cpl", "expected"),
    [
        (1, R, 3, PF_U),
        (1, W, 3, PF_U | PF_W),
        (1, X, 0, PF_I),
        (2, R, 0, 0),
        (4, W, 0, PF_W),
    ],
)
def test_not_present_fault_has_p_clear_and_access_bits(level, access, cpl, expected) -> None:  # type: ignore[no-untyped-def]
    entries = walk4(P | RW | US)
    entries[4 - level] &= ~P
    out = evaluate(entries[: 5 - level], VA, access=access, cpl=cpl)
    assert code(out) == expected
    assert out.a_may == frozenset(range(level + 1, 5))


def test_user_access_to_supervisor_page_is_a_protection_fault() -> None:
    out = evaluate(walk4(P | RW), VA, access=R, cpl=3)
    assert code(out) == PF_P | PF_U
    assert out.a_may == {4, 3, 2} and out.a_must == frozenset()


def test_supervisor_bit_at_an_upper_level_restricts_the_whole_subtree() -> None:
    entries = walk4(P | RW | US)
    entries[1] &= ~US  # the PDPTE
    assert code(evaluate(entries, VA, access=R, cpl=3)) == PF_P | PF_U


@pytest.mark.parametrize(
    ("wp", "cpl", "faults"), [(True, 0, True), (False, 0, False), (False, 3, True)]
)
def test_write_to_read_only_depends_on_cr0_wp_for_supervisor_only(wp, cpl, faults) -> None:  # type: ignore[no-untyped-def]
    out = evaluate(walk4(P | US), VA, access=W, cpl=cpl, cpu=CpuState(wp=wp))
    if faults:
        assert code(out) == PF_P | PF_W | (PF_U if cpl == 3 else 0)
    else:
        assert out.ok and out.d_must == {1}


def test_read_only_upper_level_makes_the_page_read_only() -> None:
    entries = walk4(P | RW | US)
    entries[2] &= ~RW
    assert code(evaluate(entries, VA, access=W, cpl=3)) == PF_P | PF_W | PF_U


def test_fetch_from_nx_page_faults_with_i_bit() -> None:
    assert code(evaluate(walk4(P | US | NX), VA, access=X, cpl=3)) == PF_P | PF_U | PF_I


def test_nx_at_an_upper_level_forbids_fetch_below() -> None:
    entries = walk4(P | RW | US)
    entries[0] |= NX
    assert code(evaluate(entries, VA, access=X, cpl=0)) == PF_P | PF_I


def test_nx_bit_is_reserved_when_efer_nxe_is_clear() -> None:
    cpu = CpuState(nxe=False)
    out = evaluate(walk4(P | RW | US | NX), VA, access=R, cpl=3, cpu=cpu)
    assert code(out) == PF_P | PF_RSVD | PF_U


def test_i_bit_is_not_reported_without_nxe_or_smep() -> None:
    entries = walk4(P | RW | US)
    entries[3] &= ~P
    out = evaluate(entries, VA, access=X, cpl=0, cpu=CpuState(nxe=False))
    assert code(out) == 0


def test_smep_forbids_supervisor_fetch_from_user_page() -> None:
    cpu = CpuState(smep=True)
    assert code(evaluate(walk4(P | US), VA, access=X, cpl=0, cpu=cpu)) == PF_P | PF_I
    assert evaluate(walk4(P), VA, access=X, cpl=0, cpu=cpu).ok
    assert evaluate(walk4(P | US), VA, access=X, cpl=3, cpu=cpu).ok


@pytest.mark.parametrize(("ac", "faults"), [(False, True), (True, False)])
def test_smap_forbids_supervisor_data_access_to_user_page_unless_ac(ac, faults) -> None:  # type: ignore[no-untyped-def]
    cpu = CpuState(smap=True, ac=ac)
    for access, bits in ((R, 0), (W, PF_W)):
        out = evaluate(walk4(P | RW | US), VA, access=access, cpl=0, cpu=cpu)
        if faults:
            assert code(out) == PF_P | bits
        else:
            assert out.ok


def test_smap_does_not_apply_to_fetches_or_user_accesses() -> None:
    cpu = CpuState(smap=True)
    assert evaluate(walk4(P | RW | US), VA, access=X, cpl=0, cpu=cpu).ok
    assert evaluate(walk4(P | RW | US), VA, access=R, cpl=3, cpu=cpu).ok


def test_address_bits_above_maxphyaddr_are_reserved() -> None:
    features = Features(maxphyaddr=40)
    leaf = (P | RW | US) | (1 << 45)
    out = evaluate(walk4(leaf), VA, access=R, cpl=3, features=features)
    assert code(out) == PF_P | PF_RSVD | PF_U
    assert evaluate(walk4(leaf), VA, access=R, cpl=3).ok  # with MAXPHYADDR 52, bit 45 is address
    assert reserved_mask(1, 0, CpuState(), Features(maxphyaddr=52)) == 0
    assert reserved_mask(1, 0, CpuState(), Features(maxphyaddr=51)) == 1 << 51


def test_bits_13_to_20_of_a_2mib_leaf_are_reserved() -> None:
    entries = [TABLE | 0x1000, TABLE | 0x2000, P | RW | US | PS | 0x20_0000 | (1 << 13)]
    assert code(evaluate(entries, VA, access=R, cpl=3)) == PF_P | PF_RSVD | PF_U
    entries[2] &= ~(1 << 13)
    out = evaluate(entries, VA, access=R, cpl=3)
    assert out.ok and out.page_size == 2 << 20 and out.phys == 0x20_0000 | (VA & 0x1F_FFFF)
    assert out.leaf_level == 2 and out.a_must == {4, 3, 2}


def test_1gib_leaf_reserved_bits_and_unsupported_gbpages() -> None:
    leaf = P | RW | US | PS | 0x4000_0000
    entries = [TABLE | 0x1000, leaf]
    out = evaluate(entries, VA, access=R, cpl=3)
    assert out.ok and out.page_size == 1 << 30 and out.phys == 0x4000_0000 | (VA & 0x3FFF_FFFF)
    assert code(evaluate([TABLE | 0x1000, leaf | (1 << 29)], VA, access=R, cpl=3)) & PF_RSVD
    no_gb = Features(gbpages=False)
    assert code(evaluate(entries, VA, access=R, cpl=3, features=no_gb)) == PF_P | PF_RSVD | PF_U


def test_ps_in_a_pml4e_is_reserved() -> None:
    assert code(evaluate([TABLE | PS | 0x1000], VA, access=R, cpl=0)) == PF_P | PF_RSVD


def test_pat_bit_in_a_pte_is_not_reserved() -> None:
    assert evaluate(walk4(P | RW | US | PS), VA, access=R, cpl=3).ok


def test_ignored_and_available_bits_do_not_fault() -> None:
    leaf = P | RW | US | (7 << 9) | (0x7F << 52) | 0x100 | 0x18
    assert evaluate(walk4(leaf), VA, access=W, cpl=3).ok


def test_non_canonical_address_is_a_general_protection_fault() -> None:
    out = evaluate(walk4(P | RW | US), 0x0000_8000_0000_0000, access=R, cpl=3)
    assert out.fault is not None and out.fault.vector == VECTOR_GP and out.fault.cr2 is None
    assert out.levels == ()


def test_the_walk_reads_the_entries_evaluate_decides_on() -> None:
    with PhysMemory(0x10000) as mem:
        mem.write_u64(0x1000, 0x2000 | TABLE)
        mem.write_u64(0x2000, 0x3000 | TABLE)
        mem.write_u64(0x3000, 0x20_0000 | P | PS)
        entries = walk(mem, 0x1000, 0x1234).entries
        assert entries == (0x2000 | TABLE, 0x3000 | TABLE, 0x20_0000 | P | PS)
        assert evaluate(entries, 0x1234, access=R, cpl=0).phys == 0x20_1234
        assert walk(mem, 0x1000, 1 << 39).entries == (0,)


def test_describe_names_the_error_code_bits() -> None:
    out = evaluate(walk4(P | US), VA, access=W, cpl=3)
    assert out.fault is not None and out.fault.describe() == f"#PF(P|W|U) at {VA:#x}"
