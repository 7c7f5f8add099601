"""5-level paging against a second MMU: random 5-level layouts verified on QEMU's TCG.

No KVM host here has LA57, so the ``tcg`` oracle (Unicorn, a TCG machine booted with CR4.LA57)
is the hardware side of every 5-level check. These tests need no /dev/kvm.

- Random layouts: a seeded RNG builds N address spaces (all three mappers, pages of 4 KiB and
  2 MiB in a few level-5 slots, random leaf flags) and then edits random entries of their walks
  the way a buggy kernel would (flags flipped, PS in a PML5E or PML4E, reserved bits in leaves
  and parents, entries made non-present). Each is verified in full: 0 disagreements. The number
  of cases bounds the run, never the clock.
- The honest-oracle checks: a software walk deliberately wrong at 5 levels (one that forgets the
  level-5 entry's restrictions, one that ignores NX) must be caught, in the API and on the
  command line.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import IgnoresNx

from kvmpage import PhysAddr, VirtAddr57
from kvmpage.cli import common, main
from kvmpage.paging import (
    MappedPageTable,
    OffsetPageTable,
    Page57,
    PageTable,
    PageTableFlags,
    PhysFrame,
    PoolFrameAllocator,
    RecursivePageTable,
    Size2MiB,
    Size4KiB,
    recursive_table_address,
)
from kvmpage.paging.access import CpuState
from kvmpage.tcg import TcgMachine
from kvmpage.verify import PlanOptions, Predictor, Verifier
from kvmpage.verify.fuzz import campaign
from kvmpage.verify.probes import Probe

F = PageTableFlags
ROOT = Path(__file__).parent.parent
MEMORY = 32 << 20
#: random layouts per run (about a second in all)
CASES = 64
ADDRESS = 0x000F_FFFF_FFFF_F000
RECURSIVE = 300
OFFSET = 0xFF11_0000_0000_0000  # Linux's 5-level direct map
# level-5 slots used (511 is the agent's, 300 the recursive one): 1 and 256 only exist at 57 bits
P5_SLOTS = (0, 1, 255, 256, 400)
LEAF_BITS = (F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE, F.GLOBAL, F.ACCESSED, F.DIRTY)


def _va(rng: random.Random, level: int) -> int:
    """A random page start of ``level`` (1: 4 KiB, 2: 2 MiB) in a small 57-bit universe."""
    p5, p4, p3 = rng.choice(P5_SLOTS), rng.choice((0, 1, 256)), rng.choice((0, 3))
    p2 = rng.choice((0, 1, 2))
    p1 = rng.choice((0, 1, 511)) if level == 1 else 0
    va = (p5 << 48) | (p4 << 39) | (p3 << 30) | (p2 << 21) | (p1 << 12)
    return VirtAddr57.new_truncate(va).as_u64()


def _mapper(kind: str, machine: TcgMachine, alloc: PoolFrameAllocator[Size4KiB]) -> Any:
    """A 5-level mapper of ``kind`` over a fresh level-5 table in the machine's memory."""
    top = alloc.allocate_frame()
    assert top is not None
    table = PageTable(machine.memory, top.start_address().as_u64())
    if kind == "offset":
        return OffsetPageTable(table, VirtAddr57(OFFSET), levels=5)
    if kind == "mapped":

        class Direct:
            def frame_to_pointer(self, frame: PhysFrame[Size4KiB]) -> PageTable:
                return PageTable(machine.memory, frame.start_address().as_u64())

        return MappedPageTable(table, Direct(), levels=5)
    table[RECURSIVE] = top.start_address().as_u64() | int(F.PRESENT | F.WRITABLE)
    return RecursivePageTable(
        machine.memory, recursive_table_address(RECURSIVE, levels=5), top, levels=5
    )


def _entry_addrs(memory: Any, top: int, va: int, level: int) -> list[int]:
    """Physical addresses of the entries on the walk of ``va`` from the level-5 table down to
    ``level``, following the address fields (the tables the mapper built); shorter when an
    earlier corruption sent the walk out of the memory."""
    addrs, table = [], top
    for lvl in range(5, level - 1, -1):
        if table + 4096 > memory.size:
            break
        addr = table + 8 * ((va >> (3 + 9 * lvl)) & 511)
        addrs.append(addr)
        table = memory.read_u64(addr) & ADDRESS
    return addrs


def _edit(rng: random.Random, raw: int, level: int, leaf: bool) -> int:
    """One corruption of an entry, of the kinds the architecture gives a meaning to."""
    choice = rng.randrange(6)
    if leaf and rng.random() < 0.3:
        choice = 4
    if choice == 0:  # a permission flipped
        return raw ^ int(rng.choice((F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE)))
    if choice == 1:  # not present
        return raw & ~int(F.PRESENT)
    if choice == 2:  # a reserved bit above MAXPHYADDR (TCG's is 40)
        return raw | 1 << rng.randrange(40, 52)
    if choice == 3 and level >= 4:  # PS is reserved in a PML5E and a PML4E
        return raw | int(F.HUGE_PAGE)
    if choice == 4 and leaf and level == 2:  # the low address bits of a 2 MiB leaf: reserved
        return raw | 1 << rng.randrange(13, 21)
    if choice == 4 and leaf:  # PAT in a 4 KiB leaf (bit 7): allowed, memory type only
        return raw | int(F.HUGE_PAGE)
    return raw ^ int(F.ACCESSED)  # A/D: the walk sets them, the verifier checks that


def _random_layout(seed: int) -> tuple[str, int, int]:
    """Build, corrupt and verify one random 5-level layout; (kind, disagreements, probes
    predicted to fault on a reserved bit)."""
    rng = random.Random(seed)
    kind = rng.choice(("offset", "mapped", "recursive"))
    with TcgMachine(MEMORY, la57=True) as machine:
        alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
            0x1000, machine.reserved[0], memory=machine.memory
        )
        mapper = _mapper(kind, machine, alloc)
        top = mapper.top_level_table().phys
        verifier = Verifier(mapper, machine, cpu=CpuState(la57=True), keep_results=True)
        pages: list[tuple[int, int]] = []
        for _ in range(rng.randrange(2, 6)):
            # a run of up to 4 pages with the same flags: leaves that share their parents and
            # differ only in their address (and later, maybe, in a reserved bit)
            level = rng.choice((1, 2))
            size: Any = Size4KiB if level == 1 else Size2MiB
            start, count = _va(rng, level), rng.randrange(1, 5)
            phys = alloc.allocate_contiguous(size.SIZE * count, size.SIZE)
            if phys is None:
                continue
            flags = int(F.PRESENT) | sum(int(f) for f in LEAF_BITS if rng.random() < 0.4)
            for k in range(count):
                va = start + k * size.SIZE
                page = Page57[size].from_start_address(VirtAddr57(va))
                frame = PhysFrame[size].from_start_address(PhysAddr(phys + k * size.SIZE))
                try:
                    mapper.map_to(page, frame, flags, alloc).flush()
                except Exception:  # already mapped, or under a huge page: the layout goes on
                    continue
                pages.append((va, level))
        for va, level in rng.sample(pages, k=min(len(pages), rng.randrange(1, 5))):
            addrs = _entry_addrs(machine.memory, top, va, level)
            at = rng.randrange(len(addrs))
            raw = machine.memory.read_u64(addrs[at])
            edited = _edit(rng, raw, 5 - at, leaf=5 - at == level)
            machine.memory.write_u64(addrs[at], edited)
        options = PlanOptions(full_limit=256, extra=tuple(va for va, _ in pages))
        report = verifier.verify(options)
        reserved = sum(
            1
            for _, expect, _, _ in verifier.last_results
            if expect.outcome.fault is not None and expect.outcome.fault.error_code & 0x8
        )
        assert set(report.oracles) == {"tcg"}, report.oracles
        assert report.probes > 0
        return kind, len(report.disagreements), reserved


def test_random_5_level_layouts_agree_with_tcg() -> None:
    """CASES random 5-level layouts, each corrupted and verified in full on TCG: 0
    disagreements; the cases cover all three mappers and reach reserved-bit faults (so the
    corruptions were seen, not skipped)."""
    kinds: set[str] = set()
    disagreements = reserved = 0
    for seed in range(20261204, 20261204 + CASES):
        kind, n, rsvd = _random_layout(seed)
        assert n == 0, f"seed {seed} ({kind}): {n} disagreements"
        kinds.add(kind)
        disagreements += n
        reserved += rsvd
    assert kinds == {"offset", "mapped", "recursive"}
    assert disagreements == 0 and reserved > 0


def test_bounded_5_level_campaign_on_tcg(capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzz campaign's 5-level cases (operation sequences with set_flags_p5_entry, every step
    verified on TCG with CR4.LA57), bounded by a case count: no disagreement."""
    result = campaign(20261204, cases=10, seconds=math.inf, levels=5)
    out = capsys.readouterr().out
    assert "5 levels on TCG (CR4.LA57)" in out
    assert result.cases == 10 and result.steps == 120 and result.probes > 10_000
    assert not result.failures, result.failures[0].report.format(limit=2)


# -- the oracle is honest at 5 levels ------------------------------------------------------------


class ForgetsLevel5(Predictor):
    """A software walk that believes every level-5 entry allows everything (U, W, no NX)."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        if len(entries) >= 2:  # (a walk that reached below the level-5 table)
            first = (entries[0] | int(F.USER_ACCESSIBLE | F.WRITABLE)) & ~int(F.NO_EXECUTE)
            entries = (first, *entries[1:])
        return entries, addrs


@pytest.fixture
def restricted() -> Iterator[tuple[TcgMachine, Any]]:
    """A user page in level-5 slot 1 whose level-5 entry is then made supervisor-only,
    read-only and NX with set_flags_p5_entry: every CPL3 access to it must fault."""
    with TcgMachine(MEMORY, la57=True) as machine:
        alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
            0x1000, machine.reserved[0], memory=machine.memory
        )
        mapper = _mapper("offset", machine, alloc)
        page: Page57[Size4KiB] = Page57.containing_address(VirtAddr57(0x0001_0000_0040_0000))
        frame = alloc.allocate_frame()
        assert frame is not None
        flags = F.PRESENT | F.WRITABLE | F.USER_ACCESSIBLE
        mapper.map_to(page, frame, flags, alloc).flush()
        mapper.set_flags_p5_entry(page, F.PRESENT | F.NO_EXECUTE).flush_all()
        yield machine, mapper


def test_a_walk_that_forgets_the_level_5_entry_is_caught(
    restricted: tuple[TcgMachine, Any],
) -> None:
    machine, mapper = restricted
    cpu = CpuState(la57=True)
    honest = Verifier(mapper, machine, cpu=cpu).verify()
    assert honest.ok and honest.probes > 0
    wrong = Verifier(mapper, machine, cpu=cpu, predictor=ForgetsLevel5).verify()
    assert not wrong.ok
    d = wrong.disagreements[0]
    assert d.oracle == "tcg" and d.va >> 48 == 1 and d.cpl == 3
    assert {x.access for x in wrong.disagreements} >= {"read", "write", "fetch"}


def _verify_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == code
    return code, doc


def test_cli_verifies_the_la57_example_on_tcg(capsys: pytest.CaptureFixture[str]) -> None:
    """``kvmpage verify --oracle tcg examples/la57.toml``: exit 0, every probe and every run
    labelled tcg, the 1 GiB page of level-5 slot 300 and the pages above 2**48 among them."""
    layout = str(ROOT / "examples" / "la57.toml")
    code, doc = _verify_json(capsys, "verify", "--oracle", "tcg", layout)
    assert code == 0 and doc["ok"] and doc["oracle"] == "tcg"
    assert set(doc["report"]["oracles"]) == {"tcg"}
    assert doc["report"]["oracles"]["tcg"]["disagree"] == 0
    assert all(set(r["oracles"]) == {"tcg"} for r in doc["runs"])
    giant = [r for r in doc["runs"] if r["page_size"] == 1 << 30]
    assert giant and all(r["verdict"] == "agree" for r in giant)
    assert any(int(r["virt"], 16) >> 48 not in (0, 0xFFFF) for r in doc["runs"])
    # the kernel image at -2 GiB is in level-5 slot 511, so the agent took 510 (L5-13)
    kernel = [r for r in doc["runs"] if r["virt"] == "0xffffffff80000000"]
    assert kernel and kernel[0]["verdict"] == "agree"
    assert main(["verify", "--oracle", "tcg", layout]) == 0
    assert "agent in level-5 slot 510 (511 is the layout's)" in capsys.readouterr().out


def test_cli_la57_wrong_prediction_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", IgnoresNx)
    layout = str(ROOT / "examples" / "la57.toml")
    code, doc = _verify_json(capsys, "verify", "--oracle", "tcg", layout)
    assert code == 1 and not doc["ok"]
    disagreements = doc["report"]["disagreements"]
    assert disagreements and {d["oracle"] for d in disagreements} == {"tcg"}
    assert {d["access"] for d in disagreements} == {"fetch"}


@pytest.mark.parametrize("kind", ["offset", "recursive"])
def test_reserved_bits_of_a_2mib_leaf_at_5_levels(kind: str) -> None:
    """Two 2 MiB leaves in one level-2 table, the same flags, the second with bit 13 (reserved
    in a 2 MiB leaf) set: only the second faults, with RSVD in the error code. The prediction
    cache once shared one outcome between them at 5 levels (it took a 2 MiB leaf, which has
    three entries above it there, for a 4 KiB one): found by the random layouts above."""
    with TcgMachine(MEMORY, la57=True) as machine:
        alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
            0x1000, machine.reserved[0], memory=machine.memory
        )
        mapper = _mapper(kind, machine, alloc)
        base = (1 << 48) | (1 << 39)
        for k in range(2):
            page = Page57[Size2MiB].from_start_address(VirtAddr57(base + k * (2 << 20)))
            phys = alloc.allocate_contiguous(2 << 20, 2 << 20)
            assert phys is not None
            frame = PhysFrame[Size2MiB].from_start_address(PhysAddr(phys))
            mapper.map_to(page, frame, F.PRESENT | F.WRITABLE, alloc).flush()
        top = mapper.top_level_table().phys
        second = _entry_addrs(machine.memory, top, base + (2 << 20), 2)[-1]
        machine.memory.write_u64(second, machine.memory.read_u64(second) | 1 << 13)
        verifier = Verifier(mapper, machine, cpu=CpuState(la57=True), keep_results=True)
        report = verifier.verify()
        assert report.ok, report.format(limit=2)
        faults: dict[int, list[Any]] = {base: [], base + (2 << 20): []}
        for probe, expect, _, _ in verifier.last_results:
            if probe.va >> 21 << 21 in faults:
                faults[probe.va >> 21 << 21].append(expect.outcome.fault)
        clean, reserved = faults[base], faults[base + (2 << 20)]
        assert None in clean and not any(f.error_code & 0x8 for f in clean if f is not None)
        assert reserved and all(f is not None and f.error_code & 0x8 for f in reserved)


def test_walk_of_a_5_level_layout_on_tcg(capsys: pytest.CaptureFixture[str]) -> None:
    """``walk --oracle tcg`` probes a 5-level layout's page on TCG (a -2 GiB kernel page: the
    user probes fault, the kernel read reaches its frame); KVM refuses, naming --oracle tcg."""
    layout = str(ROOT / "examples" / "la57.toml")
    assert main(["walk", "0xffffffff80000000", layout, "--oracle", "tcg", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["walk"]["steps"][0]["table"] == "PML5" and doc["kvm_translate"] is None
    probes = {(p["access"], p["cpl"]): p for p in doc["hardware"]}
    assert len(probes) == 6 and all(p["oracle"] == "tcg" and p["agree"] for p in probes.values())
    assert probes[("read", 3)]["actual"].startswith("#PF(error 0x5)")
    assert "reached physical" in probes[("read", 0)]["actual"]
    assert main(["walk", "0xffffffff80000000", layout]) == 2
    assert "--oracle tcg" in capsys.readouterr().err
