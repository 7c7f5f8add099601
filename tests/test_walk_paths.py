"""The walk's fast paths against its general path, on random tables (issue 13).

`walk` and `resolve` read a flat memory's words directly (`PhysicalMemory.flat_words`) and fall
back to the general path, one `PhysicalMemory.frame_words` per level, for anything else; the bulk
enumeration (`scan`: `LeafGroup.leaves`, a table's leaves in one comprehension) follows the same
rules a table at a time. Here each fast path is compared with the general one on random 4- and
5-level hierarchies (shared and self-referencing tables, huge pages aligned or not, reserved
address bits, NX, pointers outside memory) under random CPU states, for every address the
tables can tell apart.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpage.addr import canonicalize
from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.paging.arch import CpuState, Features
from kvmpage.paging.leaves import Leaves, scan_groups
from kvmpage.paging.walk import (
    ABSENT,
    NOT_PRESENT,
    RESERVED,
    SoftPageFault,
    Step,
    Walk,
    _resolve_general,
    _rules,
    _walk_general,
    resolve,
    resolve_below,
    walk,
)
from kvmpage.segmented import Segment, SegmentedMemory

P, W, U, PS, NX = 1, 2, 4, 0x80, 1 << 63
ROOT = 0x1000
FRAMES = 24


def random_hierarchy(seed: int, levels: int) -> tuple[PhysMemory, list[int]]:
    """A memory of `FRAMES` frames whose frames 1.. are tables with entries at a few indices
    (the same in every table, so addresses made of them reach every entry). Returns the memory
    and those indices."""
    rng = random.Random(seed)
    memory = PhysMemory(FRAMES * 4096)
    used = sorted({0, 511, *rng.sample(range(1, 511), 2)})
    for frame, index in itertools.product(range(1, FRAMES), used):
        kind = rng.random() if frame != 1 or rng.random() < 0.1 else 0.3  # the root: tables
        flags = P | rng.choice((0, W, U, W | U)) | rng.choice((0, 0x60)) | rng.choice((0, NX))
        if kind < 0.1:
            raw = rng.choice((0, W | U, 0x8000 | W))  # not present (other bits may be set)
        elif kind < 0.55:
            raw = flags | rng.randrange(1, FRAMES + 2) * 4096  # a table, or one past memory
        elif kind < 0.8:
            raw = flags | PS | rng.randrange(0, 4) << rng.choice((21, 30))  # a huge page
            raw |= rng.choice((0, 0x1000, 0x2000, 0x10_0000))  # PAT, or reserved bits
        elif kind < 0.9:
            raw = flags | rng.randrange(0, 64) * 4096  # a leaf at level 1, else a table
        else:
            raw = flags | rng.randrange(1, FRAMES) * 4096 | 1 << rng.choice((40, 47, 51))
        memory.write_u64(frame * 4096 + 8 * index, raw)
    return memory, used


def addresses(used: list[int], levels: int, seed: int) -> list[int]:
    """Every canonical address made of ``used`` indices (a random offset in each page)."""
    rng = random.Random(seed)
    out = []
    for idx in itertools.product(used, repeat=levels):
        va = sum(i << (12 + 9 * (levels - 1 - n)) for n, i in enumerate(idx))
        out.append(canonicalize(va, levels) | rng.randrange(4096))
    return out


def split(memory: PhysMemory) -> SegmentedMemory:
    """The same bytes as two segments: no flat view, so every walk takes the general path."""
    data = bytearray(memory.read(0, memory.size))
    cut = 7 * 4096
    return SegmentedMemory([Segment(0, data[:cut]), Segment(cut, data[cut:])])


CPUS = st.builds(CpuState, nxe=st.booleans(), la57=st.booleans())
FEATURES = st.builds(Features, maxphyaddr=st.sampled_from([36, 46, 52]), gbpages=st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), CPUS, FEATURES)
def test_the_flat_walk_is_the_general_walk(seed: int, cpu: CpuState, features: Features) -> None:
    memory, used = random_hierarchy(seed, cpu.levels)
    assert memory.flat_words is not None
    other = split(memory)
    assert other.flat_words is None
    rules = _rules(cpu, features)
    for va in addresses(used, cpu.levels, seed):
        fast = walk(memory, ROOT, va, cpu, features)
        assert fast == _walk_general(memory, ROOT, va, rules)
        assert all(type(s) is Step for s in fast.steps) and type(fast) is Walk
        general = walk(other, ROOT, va, cpu, features)  # (absent: worded by each memory)
        assert fast[:5] == general[:5] and (fast.reason == general.reason or fast.stop == ABSENT)


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except SoftPageFault as e:
        return ("fault", str(e))
    except PhysMemoryError:
        return "outside"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_resolve_is_the_general_resolve_and_the_walk(seed: int) -> None:
    memory, used = random_hierarchy(seed, 4)
    other = split(memory)
    for va in addresses(used, 4, seed):
        got = outcome(resolve, memory, ROOT, va)
        assert got == outcome(_resolve_general, memory, ROOT, va, 4)
        assert got == outcome(resolve_below, memory, ROOT, va, 4)
        assert got == outcome(resolve, other, ROOT, va)
        w = walk(memory, ROOT, va)  # the rules in full (reserved_mask) with the default CPU
        if w.mapped:
            assert got == w.phys
        elif w.stop == ABSENT:
            assert got == "outside"
        else:
            assert got == ("fault", f"page fault at {va:#x}: level-{w.level} entry " + (
                "is not present" if w.stop == NOT_PRESENT else w.reason.split(" entry ")[1]
            ))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), CPUS, FEATURES)
def test_the_bulk_enumeration_is_the_general_walk(
    seed: int, cpu: CpuState, features: Features
) -> None:
    memory, used = random_hierarchy(seed, cpu.levels)
    other = split(memory)
    rules = _rules(cpu, features)
    leaves = Leaves.scan(memory, ROOT, cpu=cpu, features=features)  # (at most 4**5 leaves)
    # the bulk path makes exactly the leaves of the one-at-a-time path
    for group in scan_groups(memory, ROOT, cpu=cpu, features=features):
        assert list(group.leaves()) == [group.leaf(i) for i in group.indices]
    # every leaf listed is what the general walk finds at its first and last byte
    for leaf in leaves:
        for va in (leaf.virt, leaf.virt + leaf.size - 1):
            w = _walk_general(other, ROOT, va, rules)
            assert w.phys == leaf.phys + (va - leaf.virt) and w.page_size == leaf.size
            assert w.entries == leaf.entries and w.entry_addrs == leaf.entry_addrs
            assert w.rights(cpu) == leaf.rights
    # and every address the general walk maps is listed, with the same page
    for va in addresses(used, cpu.levels, seed):
        w = _walk_general(other, ROOT, va, rules)
        found = leaves.find(va)
        assert w.mapped == (found is not None)
        if found is not None:
            assert w.phys == found.phys + (va - found.virt)
    # what the CPU faults on is listed as it faults
    for fault in leaves.faults:
        w = _walk_general(other, ROOT, fault.virt, rules)
        assert w.level == fault.level and w.stop == (ABSENT if fault.kind == "absent" else RESERVED)


def test_flat_words_only_for_one_buffer_from_zero_in_whole_frames() -> None:
    flat = PhysMemory(0x4000)
    assert flat.flat_words is flat.words
    flat.close()
    assert flat.flat_words is None
    assert PhysMemory(0x4000, present=[(0, 0x2000)]).flat_words is None
    data = bytearray(0x4000)
    assert SegmentedMemory([Segment(0, data)]).flat_words is not None
    assert SegmentedMemory([Segment(0x1000, data)]).flat_words is None
    assert SegmentedMemory([Segment(0, data[:0x1008])]).flat_words is None  # a partial frame
    two = SegmentedMemory([Segment(0, data[:0x2000]), Segment(0x2000, data[0x2000:])])
    assert two.flat_words is None
    one = SegmentedMemory([Segment(0, data)])
    one.close()
    assert one.flat_words is None


def test_irregular_roots_and_tables_take_the_general_path() -> None:
    memory = PhysMemory(0x4000)
    memory.write_u64(ROOT, 0x3000 | P | W)  # PML4[0] -> the last frame
    memory.write_u64(0x3000, 0x4000 | P | W)  # PDPT[0] -> a table one past memory
    for root in (-0x1000, 0x4000, 1 << 52):  # negative, outside, too wide
        with pytest.raises(PhysMemoryError, match="level-4 table"):
            resolve(memory, root, 0)
    for root in (ROOT + 8, ROOT + 0x7F8):  # unaligned: read where it points, as before
        assert outcome(resolve, memory, root, 0) == outcome(resolve_below, memory, root, 0, 4)
    with pytest.raises(PhysMemoryError, match="level-2 table at 0x4000"):
        resolve(memory, ROOT, 0)
    w = walk(memory, ROOT, 0)
    assert w.stop == ABSENT and w.level == 3 and "level-2 table at 0x4000" in w.reason
    memory.close()
    assert walk(memory, ROOT, 0).stop == ABSENT  # closed: nothing read, no exception


def test_a_segmented_memory_remembers_frames_until_closed() -> None:
    data = bytearray(0x4000)
    memory = SegmentedMemory([Segment(0, data[:0x2000]), Segment(0x3000, data[0x3000:])])
    first = memory.frame_words(0x3000)
    assert memory.frame_words(0x3000) is first and first[1] == 0  # the same view, same index
    for bad in (0x2000, 0x3008, 0x8000):  # absent, misaligned, outside: never remembered
        for _ in range(2):
            with pytest.raises(PhysMemoryError):
                memory.frame_words(bad)
    memory.close()
    with pytest.raises(PhysMemoryError, match="closed"):
        memory.frame_words(0x3000)
