"""The verifier on real /dev/kvm: hardware agrees with the software, and can be seen not to.

Every mapper kind is verified on the machine; live changes (unmap, remap, update_flags,
set_flags_p*_entry, clean_up) reach the guest through the agent and are verified again; a
deliberately wrong software prediction must be reported with the right walk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from support import frame_type, page_type

from kvmpage import PhysAddr, VirtAddr
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import BuiltLayout, LayoutSpec, MappingSpec, build
from kvmpage.machine import Batch, Machine
from kvmpage.paging import (
    Page,
    PageSize,
    PageTableFlags,
    PhysFrame,
    RecursivePageTable,
    Size2MiB,
    Size4KiB,
    recursive_table_address,
)
from kvmpage.paging.access import AccessKind, CpuState, Outcome
from kvmpage.verify import PlanOptions, Predictor, Verifier, verify
from kvmpage.verify.probes import Probe

pytestmark = pytest.mark.kvm

F = PageTableFlags
P, W, U, NX, G = F.PRESENT, F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE, F.GLOBAL
MEMORY = 32 << 20
R = 300  # recursive slot of the small layouts


@pytest.fixture
def machine() -> Iterator[Machine]:
    with Machine(MEMORY) as m:
        yield m


def on_machine(spec: LayoutSpec, m: Machine) -> BuiltLayout:
    """Build ``spec`` into the machine's memory, below the agent, outside its slot."""
    spec = dataclasses.replace(spec, reserved_p4=frozenset({m.agent_slot}))
    return build(spec, m.memory, alloc_end=m.reserved[0])


def small_layout(kind: str) -> LayoutSpec:
    m = MappingSpec
    return LayoutSpec(
        name=f"small-{kind}",
        kind=kind,  # type: ignore[arg-type]
        memory_size=MEMORY,
        phys_offset=0xFFFF_8880_0000_0000,
        recursive_index=R if kind == "recursive" else None,
        mappings=(
            m("user-rw", 0x40_0000, Size4KiB, 3, P | W | U | NX),
            m("user-rx", 0x50_0000, Size4KiB, 2, P | U),
            m("kernel-ro", 0xFFFF_C000_0000_0000, Size4KiB, 2, P | NX),
            m("kernel-2m", 0xFFFF_C000_4000_0000, Size2MiB, 2, P | W | G),
            m("user-2m-ro", 0x4000_0000, Size2MiB, 1, P | U | NX),
            # the tables themselves, through the physical-memory window the offset mapper uses
            m("phys-window", 0xFFFF_8880_0000_0000, Size2MiB, 4, P | W | NX, phys=0),
        ),
    )


# -- the built-in layout and every mapper kind -----------------------------------------------


def test_builtin_layout_hardware_agrees_on_every_probe(machine: Machine) -> None:
    built = on_machine(builtin_layout(), machine)
    report = verify(built.mapper, machine)
    assert report.ok, report.format()
    profile = machine.host_profile()
    assert report.oracles["mmu"].agree > 500
    assert report.oracles[profile.cpl0_oracle].agree > 300
    assert report.oracles["kvm-translate"].agree > 50
    assert report.entries_checked > 50
    assert report.coverage.holes > 0 and report.coverage.pages_full == report.coverage.pages
    for name, result in profile.features.items():
        if name in ("1gib-pages", "smep", "smap", "nx") and not result.works:
            assert name in report.unavailable  # never a silent pass
    if not profile.supports("1gib-pages"):
        assert report.unverified, "the 1 GiB mapping must be reported as not verified"
    assert report.to_dict()["disagreement_count"] == 0


@pytest.mark.parametrize("kind", ["offset", "mapped", "recursive"])
def test_every_mapper_kind_is_verified_on_hardware(machine: Machine, kind: str) -> None:
    built = on_machine(small_layout(kind), machine)
    report = verify(built.mapper, machine)
    assert report.ok, report.format()
    assert report.oracles["mmu"].probes > 80


def test_recursive_table_reads_back_the_table_bytes_through_the_recursive_address(
    machine: Machine,
) -> None:
    """R-03 on hardware: the PML4 at (r,r,r,r) and a level-1 table at (r,p4,p3,p2) read back
    exactly the bytes the mapper wrote (A/D bits aside, which the walk itself sets)."""
    built = on_machine(small_layout("recursive"), machine)
    mapper = built.mapper
    assert isinstance(mapper, RecursivePageTable)
    report = verify(mapper, machine)  # also installs the agent and loads CR3
    assert report.ok, report.format()
    va = 0x40_0000
    p1_va = recursive_table_address(R, (va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511)
    p4_va = recursive_table_address(R)
    b = Batch()
    reads = {("p4", i): b.read(int(p4_va) + 8 * i, cpl=0) for i in ((va >> 39) & 511, R, 0x1FF - 1)}
    reads |= {("p1", i): b.read(int(p1_va) + 8 * i, cpl=0) for i in range(3)}
    res = machine.run(b)
    p1_phys = built.memory.read_u64(mapper.level_4_table().phys) & 0x000F_FFFF_FFFF_F000
    assert p1_phys  # sanity: the walk below recomputes each table from memory
    for (table, i), index in reads.items():
        r = res[index]
        assert r.ok, r
        if table == "p4":
            expected = built.memory.read_u64(built.p4_phys + 8 * i)
        else:
            page: Page[Size4KiB] = Page.containing_address(VirtAddr(va + i * 4096))
            leaf = mapper.translate_page(page)
            expected = leaf.start_address().as_u64() | int(P | W | U | NX)
        assert r.value & ~0x60 == expected & ~0x60, (table, i, hex(r.value), hex(expected))


# -- the oracle must be able to fail ------------------------------------------------------------


class IgnoresUserBit(Predictor):
    """A broken software walk: it believes every entry is user accessible."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e | int(U) for e in entries), addrs


class ShiftedFrame(Predictor):
    """A broken software walk: every leaf points one frame further."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        if entries and entries[-1] & 1:
            entries = (*entries[:-1], entries[-1] + 0x1000)
        return entries, addrs


class IgnoresNx(Predictor):
    """A broken software walk: NX is never honoured."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e & ~(1 << 63) for e in entries), addrs


@pytest.mark.parametrize(
    ("predictor", "why"),
    [
        (IgnoresUserBit, "the CPU faulted"),
        (ShiftedFrame, "different frame"),
        (IgnoresNx, "the CPU faulted"),
    ],
)
def test_a_wrong_prediction_is_reported_with_both_walks(
    machine: Machine, predictor: type[Predictor], why: str
) -> None:
    built = on_machine(small_layout("offset"), machine)
    report = verify(built.mapper, machine, predictor=predictor)
    assert not report.ok
    probes = [d for d in report.disagreements if d.kind == "probe"]
    assert probes, report.format()
    d = next(d for d in probes if why in d.why)
    assert d.oracle in ("mmu", "kvm-emulator")
    text = d.format()
    assert f"{d.va:#018x}" in text and "PML4" in text and "so far:" in text
    assert "KVM_TRANSLATE" in text
    if predictor is IgnoresNx:
        assert d.access == "fetch"
    assert report.to_dict()["disagreement_count"] == len(report.disagreements)


def test_a_wrong_accessed_dirty_expectation_is_reported(machine: Machine) -> None:
    """If the software claimed a write does not dirty the leaf, the A/D check must object."""

    class NoDirty(Predictor):
        def evaluate(self, entries: tuple[int, ...], probe: Probe) -> Outcome:
            out = super().evaluate(entries, probe)
            return dataclasses.replace(out, d_must=frozenset())

    built = on_machine(small_layout("offset"), machine)
    report = verify(built.mapper, machine, predictor=NoDirty)
    ad = [d for d in report.disagreements if d.kind == "accessed-dirty"]
    assert ad and all("D set although no write" in d.why for d in ad)
    assert not [d for d in report.disagreements if d.kind == "probe"]


# -- live changes and the TLB -----------------------------------------------------------------

SIZES: list[tuple[type[PageSize], int]] = [(Size4KiB, 0x60_0000), (Size2MiB, 0x8000_0000)]


def _page(size: type[PageSize], va: int) -> Page[Any]:
    return page_type(size).containing_address(VirtAddr(va))


def _frame(size: type[PageSize], pa: int) -> PhysFrame[Any]:
    return frame_type(size).containing_address(PhysAddr(pa))


def _outcomes(v: Verifier, va: int) -> dict[tuple[str, int], str]:
    """What the hardware did at ``va`` (by access and CPL) in the last run."""
    return {
        (p.access.value, p.cpl): ("ok" if r.ok else f"fault {r.fault.error_code:#x}")  # type: ignore[union-attr]
        for p, _, r, _ in v.last_results
        if p.va & ~0xFFF == va & ~0xFFF
    }


@pytest.mark.parametrize("kind", ["offset", "mapped", "recursive"])
@pytest.mark.parametrize(("size", "va"), SIZES, ids=["4KiB", "2MiB"])
def test_live_changes_reach_the_guest_and_verify_again(
    machine: Machine, kind: str, size: type[PageSize], va: int
) -> None:
    built = on_machine(small_layout(kind), machine)
    mapper, alloc = built.mapper, built.allocator
    v = Verifier(mapper, machine, keep_results=True)
    frames = []
    for _ in range(2):
        start = alloc.allocate_contiguous(size.SIZE, size.SIZE)
        assert start is not None
        frames.append(start)
    page = _page(size, va)
    opts = PlanOptions(extra=(va,))

    def check(expect: dict[tuple[str, int], str] | None = None) -> None:
        report = v.verify(opts)
        assert report.ok, report.format()
        if expect is not None:
            got = _outcomes(v, va)
            for key, value in expect.items():
                assert got[key] == value, (key, got)

    mapper.map_to(page, _frame(size, frames[0]), P | W | U | NX, alloc).flush()
    check({("read", 3): "ok", ("write", 3): "ok", ("fetch", 3): "fault 0x15"})
    # remap to another frame: the tag read proves the new frame is reached
    mapper.unmap(page)[1].flush()
    check({("read", 3): "fault 0x4", ("read", 0): "fault 0x0"})
    mapper.map_to(page, _frame(size, frames[1]), P | W | U, alloc).flush()
    check({("read", 3): "ok", ("fetch", 3): "ok"})
    # read-only now
    mapper.update_flags(page, P | U | NX).flush()
    check({("write", 3): "fault 0x7", ("write", 0): "fault 0x3", ("read", 3): "ok"})
    # take USER away one level up, then the whole subtree is supervisor-only
    level = 3 if size is Size2MiB else 2
    setter = mapper.set_flags_p3_entry if level == 3 else mapper.set_flags_p2_entry
    setter(page, P | W).flush_all()
    check({("read", 3): "fault 0x5", ("read", 0): "ok"})
    mapper.set_flags_p4_entry(page, P | W | U).flush_all()
    check()
    # unmap and free the tables: the page is a hole again, the tables gone from the guest
    mapper.unmap(page)[1].flush()
    mapper.clean_up(alloc)
    check({("read", 3): "fault 0x4"})
    assert ("invlpg", va) in v.session.tlb.log
    assert any(kind == "flush_all" for kind, _ in v.session.tlb.log)


def test_a_skipped_flush_is_reported_truthfully(machine: Machine) -> None:
    """Change a walked leaf and ignore the flush: whatever the host does is reported as it is.

    Entries written by the agent at CPL0 are seen at once on a shadow-paging host (KVM traps
    the write), so there it agrees; on a host with a real TLB the old frame may still be read,
    and then the disagreement says that no flush covered the page."""
    built = on_machine(small_layout("offset"), machine)
    mapper, alloc = built.mapper, built.allocator
    v = Verifier(mapper, machine, keep_results=True)
    va = 0x60_0000
    a = alloc.allocate_contiguous(8192, 4096)
    assert a is not None
    b = a + 4096
    page = _page(Size4KiB, va)
    mapper.map_to(page, _frame(Size4KiB, a), P | W | U, alloc).flush()
    assert v.verify(PlanOptions(extra=(va,))).ok
    flushes = len(v.session.tlb.log)
    mapper.unmap(page)[1].ignore()
    mapper.map_to(page, _frame(Size4KiB, b), P | W | U, alloc).ignore()
    report = v.verify(PlanOptions(extra=(va,)))
    assert len(v.session.tlb.log) == flushes  # no flush at all was issued
    assert v.session.last_replayed, "the leaf change must have been applied by the agent"
    stale = [d for d in report.disagreements if d.va & ~0xFFF == va]
    for d in stale:
        assert d.note.startswith("tables changed since the last run and no flush covered")
    if machine.host_profile().kind.value == "pvm":
        assert report.ok, report.format()


def test_cpu_state_smap_and_wp_are_predicted(machine: Machine) -> None:
    """With CR4.SMAP on and CR0.WP off, CPL0 reads of user pages fault and CPL0 writes to
    read-only pages succeed, and the verifier agrees with the CPU on both."""
    profile = machine.host_profile()
    if not profile.supports("smap"):
        pytest.skip(f"SMAP unavailable on this host: {profile.features['smap'].evidence}")
    built = on_machine(small_layout("offset"), machine)
    v = Verifier(built.mapper, machine, cpu=CpuState(smap=True, wp=False), keep_results=True)
    report = v.verify()
    assert report.ok, report.format()
    assert _outcomes(v, 0x40_0000)[("read", 0)] == "fault 0x1"
    assert _outcomes(v, 0xFFFF_C000_0000_0000)[("write", 0)] == "ok"


def test_machine_memory_is_required(machine: Machine) -> None:
    built = build(small_layout("offset"))
    try:
        with pytest.raises(ValueError, match=r"machine\.memory"):
            Verifier(built.mapper, machine)
    finally:
        built.close()


def test_probe_access_kinds_are_all_used(machine: Machine) -> None:
    built = on_machine(small_layout("offset"), machine)
    v = Verifier(built.mapper, machine, keep_results=True)
    assert v.verify().ok
    kinds = {(p.access, p.cpl) for p, _, _, _ in v.last_results}
    assert kinds == {(a, c) for a in AccessKind for c in (0, 3)}


def test_pml4_slots_the_host_keeps_are_skipped_at_cpl3_and_reported(machine: Machine) -> None:
    """A user page in a slot the hypervisor keeps (PVM: 256) is verified at CPL0 only, and the
    report says why the CPL3 probes were left out (never a silent pass, never a false alarm)."""
    profile = machine.host_profile()
    spec = LayoutSpec(
        name="slot-256",
        memory_size=MEMORY,
        mappings=(MappingSpec("user-256", 0xFFFF_8000_0000_0000, Size4KiB, 2, P | W | U),),
    )
    report = verify(on_machine(spec, machine).mapper, machine)
    assert report.ok, report.format()
    if 256 in profile.cpl3_blocked_slots:
        assert "cpl3-every-pml4-slot" in report.unavailable
        assert report.coverage.skipped["CPL3 access in a PML4 slot this host keeps for itself"] > 0
    assert report.oracles[profile.cpl0_oracle].probes > 0
    if profile.kind.value == "pvm":
        assert 256 in profile.cpl3_blocked_slots


def test_probes_beyond_the_machine_capacity_run_in_several_batches() -> None:
    with Machine(MEMORY, capacity=64) as m:
        built = on_machine(small_layout("mapped"), m)
        v = Verifier(built.mapper, m, keep_results=True)
        report = v.verify()
        assert report.ok, report.format()
        assert len(v.last_results) > 3 * 64  # several KVM_RUNs, results in probe order
        # each result belongs to its probe, across the batch boundaries
        assert all(r.addr == p.va and r.cpl == p.cpl for p, _, r, _ in v.last_results)


def test_a_replay_longer_than_a_batch_spans_several_runs() -> None:
    """Unmapping more entries than one batch holds: the agent's writes are split over several
    KVM_RUNs before the probes, and the guest sees every change."""
    with Machine(MEMORY, capacity=64) as m:
        spec = LayoutSpec(
            name="many",
            memory_size=MEMORY,
            mappings=(MappingSpec("pages", 0x40_0000, Size4KiB, 200, P | W | U),),
        )
        built = on_machine(spec, m)
        v = Verifier(built.mapper, m, keep_results=True)
        assert v.verify(PlanOptions(holes=False)).ok
        for i in range(1, 200, 2):  # every other page: 100 leaf writes through the agent
            built.mapper.unmap(_page(Size4KiB, 0x40_0000 + i * 4096))[1].flush()
        report = v.verify(PlanOptions(extra=(0x40_1000, 0x40_0000 + 199 * 4096)))
        assert report.ok, report.format()
        assert len(v.session.last_replayed) == 100
        gone = _outcomes(v, 0x40_0000 + 199 * 4096)
        assert gone[("read", 3)] == "fault 0x4"


def test_efer_nxe_clear_makes_nx_a_reserved_bit(machine: Machine) -> None:
    """With EFER.NXE clear (set by the agent), every NX page faults with RSVD, and the
    verifier predicts exactly that."""
    built = on_machine(small_layout("offset"), machine)
    v = Verifier(built.mapper, machine, cpu=CpuState(nxe=False), keep_results=True)
    report = v.verify()
    assert report.ok, report.format()
    assert _outcomes(v, 0x40_0000)[("read", 3)] == "fault 0xd"  # P|U|RSVD


def test_a_stray_write_is_caught_by_the_tag_readback(machine: Machine) -> None:
    """Tags and fetch stubs are read back after the run: a write that lands on a tagged frame
    it should not have reached is a disagreement, even when every probe itself agreed."""
    built = on_machine(small_layout("offset"), machine)
    v = Verifier(built.mapper, machine)
    real_run = v.session.run
    victim: list[int] = []

    def run_then_stray_write(probes, cpu, bulk_reads=(), **kwargs):  # type: ignore[no-untyped-def]
        results = real_run(probes, cpu, bulk_reads, **kwargs)
        leaf = next(p.leaf for p in probes if p.leaf is not None and p.leaf.size == 4096)
        victim.append(leaf.phys)
        machine.memory.write_u64(leaf.phys, 0xBAD)  # as if a write had gone astray
        return results

    v.session.run = run_then_stray_write  # type: ignore[method-assign]
    report = v.verify()
    data = [d for d in report.disagreements if d.kind == "data"]
    assert len(data) == 1 and f"{victim[0]:#x}" in data[0].why
    assert report.data_checked > 20 and not report.ok
    assert all(d.kind == "data" for d in report.disagreements)


def test_tags_are_read_back_after_a_clean_run(machine: Machine) -> None:
    report = verify(on_machine(small_layout("mapped"), machine).mapper, machine)
    assert report.ok and report.data_checked > 20
    assert report.to_dict()["data_checked"] == report.data_checked


def test_after_a_watchdog_stop_the_next_verification_reloads_the_address_space(
    machine: Machine,
) -> None:
    """A run that the watchdog ends resets the vCPU to the agent's CR3; the session must load
    the layout's CR3 and CPU state again, or later probes would run in the wrong space."""
    from kvmpage.machine import WatchdogTimeout

    built = on_machine(small_layout("offset"), machine)
    v = Verifier(built.mapper, machine, cpu=CpuState(wp=False))
    assert v.verify().ok
    real_run = machine.run

    def hung(batch, timeout=None):  # type: ignore[no-untyped-def]
        machine.reset_cpu()  # what the machine does after ending a stuck guest
        raise WatchdogTimeout("simulated: the guest ran too long")

    machine.run = hung  # type: ignore[method-assign]
    with pytest.raises(WatchdogTimeout):
        v.verify()
    machine.run = real_run  # type: ignore[method-assign]
    report = v.verify()
    assert report.ok, report.format()
