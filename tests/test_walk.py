"""The one software walk (`kvmpage.paging.walk`), rule by rule, and its two fast paths against it:
`resolve` (one address) and `kvmpage.paging.leaves` (every mapping, a table at a time)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpage.addr import canonicalize
from kvmpage.memory import PhysMemory
from kvmpage.paging.arch import CpuState, Features, reserved_mask
from kvmpage.paging.leaves import Leaves, TooManyLeaves, scan, table_frames
from kvmpage.paging.walk import (
    ABSENT,
    NOT_CANONICAL,
    NOT_PRESENT,
    RESERVED,
    SoftPageFault,
    resolve,
    rights_of,
    walk,
)
from kvmpage.segmented import Segment, SegmentedMemory

P, W, U, PS, NX = 1, 2, 4, 0x80, 1 << 63
T = P | W | U  # a permissive table entry
ROOT = 0x1000


def tables(*entries: tuple[int, int, int]) -> PhysMemory:
    """A 1 MiB memory with ``(table, index, raw)`` entries written."""
    mem = PhysMemory(1 << 20)
    for table, index, raw in entries:
        mem.write_u64(table + 8 * index, raw)
    return mem


def chain(leaf: int, leaf_level: int = 1, va: int = 0x1234_5000, root: int = ROOT) -> PhysMemory:
    """Tables from ``root`` down to a leaf entry ``leaf`` at ``leaf_level`` for ``va``."""
    entries = []
    table = root
    for level in range(4, leaf_level, -1):
        child = table + 0x1000
        entries.append((table, (va >> (3 + 9 * level)) & 511, child | T))
        table = child
    entries.append((table, (va >> (3 + 9 * leaf_level)) & 511, leaf))
    return tables(*entries)


# -- the rules --------------------------------------------------------------------------------


def test_a_4k_leaf_translates_and_keeps_its_offset() -> None:
    w = walk(chain(0x8000 | T), ROOT, 0x1234_5678)
    assert w.mapped and w.phys == 0x8678 and w.page_size == 4096 and w.stop is None
    assert [s.level for s in w.steps] == [4, 3, 2, 1]
    assert w.steps[-1].entry_addr == ROOT + 0x3000 + 8 * ((0x1234_5678 >> 12) & 511)


def test_huge_leaves_mask_the_pat_bit_and_keep_the_offset() -> None:
    two_m = walk(chain(0x40_0000 | 0x1000 | T | PS, 2), ROOT, 0x1234_5678)  # PAT (bit 12) set
    assert two_m.phys == 0x40_0000 | (0x1234_5678 & 0x1F_FFFF) and two_m.page_size == 2 << 20
    one_g = walk(chain(0x4000_0000 | 0x1000 | T | PS, 3), ROOT, 0x1234_5678)
    assert one_g.phys == 0x4000_0000 | 0x1234_5678 and one_g.page_size == 1 << 30


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_a_missing_entry_stops_the_walk_at_its_level(level: int) -> None:
    mem = chain(0x8000 | T)
    va = 0x1234_5000
    entry = walk(mem, ROOT, va).steps[4 - level].entry_addr
    mem.write_u64(entry, mem.read_u64(entry) & ~P)  # everything else stays: still not present
    w = walk(mem, ROOT, va)
    assert w.stop == NOT_PRESENT and w.level == level and not w.mapped
    assert f"level-{level} entry not present" in w.reason


@pytest.mark.parametrize(
    ("leaf", "level", "bits"),
    [
        (0x40_0000 | 0x2000 | T | PS, 2, 0x2000),  # bits 13..20 of a 2 MiB leaf
        (0x40_0000 | 0x10_0000 | T | PS, 2, 0x10_0000),
        (0x4000_0000 | 0x2000_0000 | T | PS, 3, 0x2000_0000),  # bits 13..29 of a 1 GiB leaf
    ],
)
def test_misaligned_huge_leaves_have_reserved_bits(leaf: int, level: int, bits: int) -> None:
    w = walk(chain(leaf, level), ROOT, 0x1234_5000)
    assert w.stop == RESERVED and w.level == level and f"{bits:#x}" in w.reason


def test_ps_is_reserved_in_the_top_levels_and_at_level_3_without_1g_pages() -> None:
    mem = tables((ROOT, 0, 0x2000 | T | PS))
    w = walk(mem, ROOT, 0x1000)
    assert w.stop == RESERVED and w.level == 4 and "0x80" in w.reason
    one_g = chain(0x4000_0000 | T | PS, 3)
    assert walk(one_g, ROOT, 0x1234_5000, features=Features(gbpages=False)).stop == RESERVED
    assert walk(one_g, ROOT, 0x1234_5000, features=Features(gbpages=True)).mapped


def test_address_bits_above_maxphyaddr_are_reserved_at_every_level() -> None:
    high = 1 << 45
    mem = chain(high | 0x8000 | T)
    assert walk(mem, ROOT, 0x1234_5000, features=Features(maxphyaddr=46)).mapped
    w = walk(mem, ROOT, 0x1234_5000, features=Features(maxphyaddr=45))
    assert w.stop == RESERVED and w.level == 1 and f"{high:#x}" in w.reason
    assert reserved_mask(3, 0, CpuState(), Features(maxphyaddr=40)) == 0x000F_FF00_0000_0000


def test_nx_is_a_right_with_efer_nxe_and_reserved_without() -> None:
    mem = chain(0x8000 | T | NX)
    w = walk(mem, ROOT, 0x1234_5000)
    assert w.mapped and not w.rights().executable
    off = walk(mem, ROOT, 0x1234_5000, CpuState(nxe=False))
    assert off.stop == RESERVED and f"{NX:#x}" in off.reason


def test_rights_combine_over_every_level() -> None:
    assert str(rights_of([T, T, T, T])) == "U rwx"
    assert str(rights_of([T, P | U, T, T])) == "U r-x"  # one read-only parent
    assert str(rights_of([T, T, P | W, T])) == "K rwx"  # one supervisor parent
    assert str(rights_of([T | NX, T, T, T])) == "U rw-"  # NX anywhere
    assert str(rights_of([T | NX, T, T, T], CpuState(nxe=False))) == "U rwx"


@pytest.mark.parametrize(
    ("va", "levels", "canonical"),
    [
        (0x0000_7FFF_FFFF_F000, 4, True),
        (0x0000_8000_0000_0000, 4, False),
        (0xFFFF_8000_0000_0000, 4, True),
        (0xFF00_0000_0000_0000, 4, False),
        (0xFF00_0000_0000_0000, 5, True),
        (0x00FF_FFFF_FFFF_F000, 5, True),
        (0x0100_0000_0000_0000, 5, False),
    ],
)
def test_non_canonical_addresses_are_not_walked(va: int, levels: int, canonical: bool) -> None:
    w = walk(tables(), ROOT, va, CpuState(la57=levels == 5))
    assert (w.stop != NOT_CANONICAL) == canonical
    if not canonical:
        assert w.steps == () and "not canonical" in w.reason and "#GP" in w.reason
    assert canonicalize(va, levels) == va or not canonical


def test_five_levels_walk_from_the_pml5() -> None:
    va = canonicalize((3 << 48) | 0x1234_5000, 5)
    entries = [(ROOT, 3, 0x2000 | T)]
    table = 0x2000
    for level in (4, 3, 2):
        entries.append((table, (va >> (3 + 9 * level)) & 511, (table + 0x1000) | T))
        table += 0x1000
    entries.append((table, (va >> 12) & 511, 0x9000 | T))
    w = walk(tables(*entries), ROOT, va + 0x10, CpuState(la57=True))
    assert w.phys == 0x9010 and [s.level for s in w.steps] == [5, 4, 3, 2, 1]
    # the same tables read as 4 levels mean something else entirely
    assert walk(tables(*entries), ROOT, va + 0x10).phys != 0x9010


def test_a_table_missing_from_an_image_is_absent_not_zero() -> None:
    image = bytearray(0x4000)
    image[0x0:8] = (0x5000 | T).to_bytes(8, "little")  # PML4[0] -> 0x5000, not in the image
    mem = SegmentedMemory([Segment(ROOT, image)], readonly=False)
    w = walk(mem, ROOT, 0x1000)
    assert w.stop == ABSENT and w.level == 4 and "0x5000" in w.reason
    assert walk(mem, 0x9000, 0x1000).stop == ABSENT  # the root itself


# -- fast paths against the walk --------------------------------------------------------------


def random_tables(seed: int, frames: int = 12) -> tuple[PhysMemory, list[int]]:
    """Small random hierarchies: shared tables, self references, huge and reserved bits,
    pointers outside memory. Returns the memory and the indices in use per level."""
    rng = random.Random(seed)
    mem = PhysMemory(frames * 4096)
    used = sorted(rng.sample(range(512), 3))
    bits = [P, P | W, T, T | NX, T | PS, T | PS | 0x2000, T | (1 << 51), 0, T | 0x60, P | U]
    for frame in range(1, frames):
        for index in used:
            raw = rng.choice(bits)
            target = rng.randrange(0, frames + 3) * 4096  # a few outside memory
            if raw & PS and rng.random() < 0.5:
                target = rng.randrange(0, 8) << 21
            mem.write_u64(frame * 4096 + 8 * index, (raw | target) if raw else 0)
    return mem, used


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.booleans(), st.booleans())
def test_scan_lists_exactly_what_the_walk_finds(seed: int, nxe: bool, gbpages: bool) -> None:
    mem, used = random_tables(seed)
    cpu, features = CpuState(nxe=nxe), Features(maxphyaddr=46, gbpages=gbpages)
    leaves = Leaves.scan(mem, ROOT, cpu=cpu, features=features)
    listed = {leaf.virt: leaf for leaf in leaves}
    for leaf in leaves:
        w = walk(mem, ROOT, leaf.virt + leaf.size - 8, cpu, features)
        assert w.mapped and w.phys == leaf.phys + leaf.size - 8
        assert w.page_size == leaf.size and w.rights(cpu) == leaf.rights
        assert w.entries == leaf.entries and w.entry_addrs == leaf.entry_addrs
    for fault in leaves.faults:
        w = walk(mem, ROOT, fault.virt, cpu, features)
        assert w.stop == (RESERVED if fault.kind == "reserved" else ABSENT)
        assert w.level == fault.level
    # every address built from the indices in use: mapped exactly when a leaf lists it
    for i4 in used:
        for i3 in used:
            for i2 in used:
                for i1 in used:
                    va = canonicalize((i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12))
                    w = walk(mem, ROOT, va, cpu, features)
                    found = leaves.find(va)
                    assert w.mapped == (found is not None)
                    if found is not None:
                        assert found.virt in listed


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32))
def test_resolve_is_the_walk_with_default_rules(seed: int) -> None:
    mem, used = random_tables(seed)
    rng = random.Random(seed)
    for _ in range(40):
        va = canonicalize(sum(rng.choice(used) << (3 + 9 * lvl) for lvl in (4, 3, 2, 1)))
        va |= rng.randrange(4096)
        w = walk(mem, ROOT, va)
        try:
            got: int | str = resolve(mem, ROOT, va)
        except SoftPageFault:
            got = "fault"
        except Exception:
            got = "outside"
        expected = w.phys if w.mapped else ("outside" if w.stop == ABSENT else "fault")
        assert got == expected


def test_shared_and_self_referencing_tables_are_walked_as_the_cpu_does() -> None:
    # PML4[1] points back at the PML4 (a recursive slot), PML4[0] -> PDPT -> PD whose 4 entries
    # all point at one PT (shared): 4 x 2 pages through one table, plus the recursive views
    mem = tables(
        (ROOT, 0, 0x2000 | T),
        (ROOT, 1, ROOT | T),
        (0x2000, 0, 0x3000 | T),
        *[(0x3000, i, 0x4000 | T) for i in range(4)],
        (0x4000, 0, 0x8000 | T),
        (0x4000, 1, 0x9000 | T),
    )
    leaves = Leaves.scan(mem, ROOT)
    normal = [leaf for leaf in leaves if leaf.virt < 1 << 39]
    assert [leaf.phys for leaf in normal] == [0x8000, 0x9000] * 4
    assert len(leaves) > len(normal)  # the tables, seen as data through slot 1
    assert all(walk(mem, ROOT, leaf.virt).phys == leaf.phys for leaf in leaves)
    assert len(Leaves.scan(mem, ROOT, skip_p4=frozenset({1}))) == 8
    frames = table_frames(mem, ROOT, skip_p4=frozenset({1}))
    assert sorted(frames) == [0x1000, 0x2000, 0x3000, 0x4000]


def test_a_pointer_loop_is_bounded() -> None:
    # every PML4 entry points back at the PML4: 512**3 tables fan out below it
    mem = tables(*[(ROOT, i, ROOT | T) for i in range(512)])
    with pytest.raises(TooManyLeaves, match="pointer loop"):
        sum(1 for _ in scan(mem, ROOT, limit=100_000))
    assert table_frames(mem, ROOT) == [ROOT]  # each (table, level) once


def test_a_virtual_range_limits_the_scan() -> None:
    va = 0xFFFF_8880_0000_0000
    mem = chain(0x8000 | T, va=va)
    mem.write_u64(ROOT + 8, 0x7000 | T)  # PML4[1], elsewhere (its PDPT is empty)
    assert [leaf.virt for leaf in Leaves.scan(mem, ROOT, start=va, end=va + 4096)] == [va]
    assert len(Leaves.scan(mem, ROOT, start=0, end=1 << 47)) == 0
    assert len(Leaves.scan(mem, ROOT, start=va + 4096, end=1 << 64)) == 0
