"""Large-layout plumbing without KVM: `scan_groups` / `Leaves` against the per-leaf scan, the
plan made from either, the bulk tag store and readback, and the column-wise result readers."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.dump import coalesce, runs_of
from kvmpage.layout.spec import LayoutSpec, MappingSpec, build
from kvmpage.machine.protocol import (
    R_CR2,
    R_STATUS,
    R_VALUE,
    RECORD_SIZE,
    ST_FAULT,
    ST_OK,
    Batch,
    BatchResults,
)
from kvmpage.memory import PhysMemory
from kvmpage.paging import PageTableFlags, Size1GiB, Size2MiB, Size4KiB
from kvmpage.paging.leaves import Leaves, scan, scan_groups
from kvmpage.verify import bulk
from kvmpage.verify.probes import TAG_PREFIX, PlanOptions, make_plan
from kvmpage.verify.session import RunResults

F = PageTableFlags
P, W, U, NX = F.PRESENT, F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE
MEMORY = 64 << 20


def mixed_spec(seed: int) -> LayoutSpec:
    """4 KiB, 2 MiB and 1 GiB pages, sharing tables (a level-2 table holds both 2 MiB leaves
    and pointers to level-1 tables), with holes, different rights and an aliased frame."""
    rng = random.Random(seed)
    flags = [P | W | U, P | U | NX, P | W, P | W | U | NX]
    m = MappingSpec
    mappings = [
        m("a", 0x40_0000, Size4KiB, rng.randint(1, 500), rng.choice(flags)),
        m("b", 0x60_0000, Size2MiB, rng.randint(1, 3), rng.choice(flags)),
        m("c", 0xC0_0000, Size4KiB, rng.randint(1, 40), rng.choice(flags)),
        m("d", 0x1_0000_0000, Size4KiB, 513, P | W | U),  # crosses a level-1 table
        m("e", 0xFFFF_C000_0000_0000, Size4KiB, rng.randint(1, 30), rng.choice(flags)),
        m("f", 0xFFFF_C000_4000_0000, Size1GiB, 1, P | W, phys=0),
        m("g", 0x7F00_0000_0000, Size4KiB, 3, P | U, phys=0x20_0000),
        m("alias", 0x7F00_0001_0000, Size4KiB, 3, P | U, phys=0x20_0000),
    ]
    return LayoutSpec(name=f"mixed-{seed}", memory_size=MEMORY, mappings=tuple(mappings))


def built_leaves(spec: LayoutSpec) -> tuple[PhysMemory, int, list, Leaves]:  # type: ignore[type-arg]
    built = build(spec, PhysMemory(spec.memory_size))
    flat = list(scan(built.memory, built.p4_phys))
    return built.memory, built.p4_phys, flat, Leaves.scan(built.memory, built.p4_phys)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_leaves_index_find_and_runs_match_the_flat_scan(seed: int) -> None:
    _, _, flat, leaves = built_leaves(mixed_spec(seed))
    assert len(leaves) == len(flat) and list(leaves) == flat
    assert [leaves[i] for i in range(len(flat))] == flat
    assert leaves[-1] == flat[-1] and leaves[3:9] == flat[3:9]
    with pytest.raises(IndexError):
        leaves[len(flat)]
    for leaf in flat:
        assert leaves.find(leaf.virt) == leaf
        assert leaves.find(leaf.virt + leaf.size - 1) == leaf
    for va in (0, 0x3F_F000, 0x1_0000_0000 + 513 * 4096, 0xFFFF_FFFF_FFFF_F000):
        assert leaves.find(va) is None
    assert runs_of(leaves) == list(coalesce(flat))


def test_a_level_2_table_with_huge_pages_and_child_tables_is_split_in_order() -> None:
    spec = LayoutSpec(
        name="split",
        memory_size=MEMORY,
        mappings=(
            MappingSpec("huge-1", 0x20_0000, Size2MiB, 1, P | W, phys=0x40_0000),
            MappingSpec("small", 0x40_0000, Size4KiB, 2, P | W),
            MappingSpec("huge-2", 0x60_0000, Size2MiB, 1, P | W, phys=0x60_0000),
        ),
    )
    memory, p4, flat, leaves = built_leaves(spec)
    groups = list(scan_groups(memory, p4))
    assert [(g.level, len(g.indices)) for g in groups] == [(2, 1), (1, 2), (2, 1)]
    assert groups[0].table == groups[2].table
    assert list(leaves) == flat


def test_contiguous_groups_are_detected_exactly() -> None:
    m = MappingSpec
    spec = LayoutSpec(
        name="tables",
        memory_size=MEMORY,
        mappings=(
            m("whole", 0x40_0000, Size4KiB, 512, P | W),  # one run filling a table
            m("rw", 0x60_0000, Size4KiB, 4, P | W),  # two runs in one table
            m("ro", 0x60_4000, Size4KiB, 4, P),
            m("gap-1", 0x80_0000, Size4KiB, 2, P),  # a hole inside the group
            m("gap-2", 0x80_3000, Size4KiB, 2, P),
            m("apart", 0xA0_0000, Size4KiB, 3, P, phys=0x30_0000),  # frames not contiguous
            m("apart-2", 0xA0_3000, Size4KiB, 1, P, phys=0x20_0000),
        ),
    )
    memory, p4, _, leaves = built_leaves(spec)
    verdicts = [g.contiguous() for g in leaves.groups]
    assert verdicts == [True, False, False, False]
    # the CPU sets A and D as it goes: still one run
    whole = leaves.groups[0].table
    memory.write_u64(whole + 8 * 7, memory.read_u64(whole + 8 * 7) | 0x60)
    memory.write_u64(whole + 8 * 9, memory.read_u64(whole + 8 * 9) | 0x20)
    used = Leaves.scan(memory, p4)
    assert [g.contiguous() for g in used.groups] == verdicts
    assert runs_of(used) == list(coalesce(scan(memory, p4)))
    for g in leaves.groups:
        runs = list(coalesce(g.leaves()))
        consecutive = g.indices == list(range(g.indices[0], g.indices[-1] + 1))
        assert g.contiguous() == (len(runs) == 1 and consecutive)


@pytest.mark.parametrize("seed", [0, 7])
def test_plans_from_leaves_and_from_a_list_are_the_same(seed: int) -> None:
    _, _, flat, leaves = built_leaves(mixed_spec(seed))
    options = PlanOptions(full_limit=16, sample=20, seed=seed, extra=(0x40_0000, 0x5000_0000))
    from_list = make_plan(flat, options)
    from_groups = make_plan(leaves, options)
    assert from_groups.probes == from_list.probes
    assert from_groups.coverage == from_list.coverage
    bulk_plan = make_plan(leaves, options, bulk=True)
    read_only = [p for p in from_list.probes if p not in bulk_plan.probes]
    paged = [g.group.virt(i) for g in bulk_plan.bulk for i in g.indices]
    assert [p.va for p in read_only] == paged and len(paged) == bulk_plan.bulk_pages
    assert all(p.access.value == "read" and p.cpl == 3 for p in read_only)
    assert bulk_plan.coverage == from_list.coverage


def test_small_layouts_get_no_bulk_pages() -> None:
    memory = PhysMemory(MEMORY)
    built = build(builtin_layout(), memory)
    plan = make_plan(Leaves.scan(memory, built.p4_phys), bulk=True)
    assert plan.bulk == [] and plan.coverage.pages_full == plan.coverage.pages


# -- tags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phys",
    [
        [0x10_0000 + 4096 * k for k in range(300)],  # consecutive: one strided store
        [0x30_0000 + 8192 * k for k in range(50)],  # every other frame
        [0x50_0000, 0x40_0000, 0x60_3000],  # any order
    ],
)
def test_tags_are_stored_and_read_back_at_each_frame(phys: list[int]) -> None:
    memory = PhysMemory(16 << 20)
    words = memory._q
    tags = [TAG_PREFIX | p for p in phys]
    bulk._store(words, phys, tags)
    assert [memory.read_u64(p) for p in phys] == tags
    assert bulk.load(words, phys) == tags
    assert sum(1 for w in words if w) == len(phys)  # nothing else written


def test_a_changed_tag_is_found_with_its_page() -> None:
    memory = PhysMemory(16 << 20)
    phys = [0x10_0000 + 4096 * k for k in range(8)]
    chunk = bulk.BulkChunk(
        group=None,  # type: ignore[arg-type]
        indices=list(range(8)),
        vas=[0x40_0000 + 4096 * k for k in range(8)],
        outcomes=[],
        uniform=None,
        values=[TAG_PREFIX | p for p in phys],
        tagged=phys,
    )
    bulk._store(memory._q, phys, [TAG_PREFIX | p for p in phys])
    assert bulk.changed_tags(memory._q, chunk) == []
    memory.write_u64(phys[5], 0xBAD)
    assert bulk.changed_tags(memory._q, chunk) == [(phys[5], TAG_PREFIX | phys[5], 0x40_5000)]


# -- batches and results ----------------------------------------------------------------------


def test_many_reads_encode_exactly_like_single_reads() -> None:
    addresses = [0x40_0000 + 4096 * k for k in range(100)] + [(1 << 64) - 8]
    fast, slow = Batch(), Batch()
    assert fast.reads(addresses) == range(0, len(addresses))
    for a in addresses:
        slow.read(a, 3)
    assert bytes(fast.data) == bytes(slow.data) and fast.slots == slow.slots
    with pytest.raises(ValueError, match="64 bits"):
        Batch().reads([1 << 64])
    with pytest.raises(ValueError, match="64 bits"):
        Batch().reads([-1])


def _results(records: list[tuple[int, int, int]]) -> BatchResults:
    """A batch's results with (value, status, cr2) per record."""
    data = bytearray(len(records) * RECORD_SIZE)
    for i, (value, status, cr2) in enumerate(records):
        base = i * RECORD_SIZE
        struct.pack_into("<Q", data, base + R_VALUE, value)
        struct.pack_into("<Q", data, base + R_CR2, cr2)
        struct.pack_into("<I", data, base + R_STATUS, status)
    return BatchResults(bytes(data), len(records), "kvm-emulator")


def test_run_results_columns_and_records_span_batches_and_skip_services() -> None:
    results = RunResults()
    results.add(_results([(9, ST_OK, 0), (1, ST_OK, 0), (2, ST_FAULT, 0x5000)]), 1)
    results.add(_results([(3, ST_OK, 0), (4, ST_OK, 0)]), 0)
    assert len(results) == 4
    assert results.column(R_VALUE) == [1, 2, 3, 4]
    assert results.column(R_STATUS) == [ST_OK, ST_FAULT, ST_OK, ST_OK]
    assert [r[5] for r in results.records(1, 3)] == [2, 3]
    assert results.result(1).status == ST_FAULT and results.result(2).value == 3
    assert results.column(R_CR2) == [0, 0x5000, 0, 0]
    with pytest.raises(ValueError, match="no result field"):
        results.column(3)
