"""The ``tcg`` oracle: QEMU's TCG MMU through Unicorn, as a second machine for the verifier.

These tests need no /dev/kvm (the ``dev`` extra installs Unicorn); the ones comparing TCG with
KVM are marked ``kvm``. The expected values are the architecture's (Intel SDM vol. 3A, 4.7),
written out by hand, not the software model's: the oracle is checked on its own first.
"""

from __future__ import annotations

import dataclasses
import importlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import IgnoresNx, run, run_json

from kvmpage import VirtAddr
from kvmpage.cli import common
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import BuiltLayout, LayoutSpec, build
from kvmpage.machine import Batch, GuestCrashError, WatchdogTimeout, fetch_stub, pte
from kvmpage.machine.errors import AgentSlotConflict
from kvmpage.paging import Page, PageTableFlags, Size4KiB
from kvmpage.tcg import INSTALL_HINT, TcgMachine, TcgUnavailable, available
from kvmpage.tcg.machine import tcg_profile
from kvmpage.verify import PlanOptions, Predictor, Verifier, verify
from kvmpage.verify.probes import Probe
from kvmpage.verify.tlb import NOT_CHECKABLE, Unflushed

ROOT = Path(__file__).parent.parent
F = PageTableFlags
TAG = 0x6B70 << 48
USER, KERNEL, NXPAGE, HOLE, MMIO = 0x40_0000, 0x40_1000, 0x40_2000, 0x40_3000, 0x40_4000


@pytest.fixture
def machine() -> Iterator[TcgMachine]:
    with TcgMachine(16 << 20) as m:
        yield m


class Space(pte.SimpleSpace):
    """A throw-away address space that remembers the frame of each page it mapped."""

    frame_of: dict[int, int]

    def translate(self, va: int) -> int:
        return self.frame_of[va]


def small_space(m: TcgMachine) -> Space:
    """A user rw page, a supervisor read-only page, a user NX page, a hole and a page of
    guest-physical space with no RAM behind it; each frame tagged, with a fetch stub."""
    mem = m.memory
    frames = pte.FrameBump(mem, 0x10_0000, m.reserved[0])
    space = Space(mem, frames)
    space.frame_of = {}
    for va, flags in ((USER, pte.P | pte.W | pte.U), (KERNEL, pte.P),
                      (NXPAGE, pte.P | pte.W | pte.U | pte.NX)):  # fmt: skip
        f = frames.alloc()
        mem.write_u64(f, TAG | f)
        mem.write(f + 0x40, fetch_stub(TAG | f | 0x40))
        space.map(va, f, flags)
        space.frame_of[va] = f
    space.map(MMIO, 1 << 35, pte.P | pte.U)
    m.install_agent_slot(space.p4)
    return space


def outcome(r: Any) -> str:
    return f"#{r.fault.vector}:{r.fault.error_code:#x}" if r.fault is not None else "ok"


# -- the machine on its own ------------------------------------------------------------------


def test_every_access_kind_and_cpl_gets_the_architectural_answer(machine: TcgMachine) -> None:
    space = small_space(machine)
    b = Batch()
    b.load_cr3(space.p4)
    at = {}
    for cpl in (3, 0):
        for va in (USER, KERNEL, NXPAGE, HOLE):
            at["r", cpl, va] = b.read(va, cpl)
            at["w", cpl, va] = b.write(va + 8, 0, cpl)
            at["f", cpl, va] = b.fetch(va + 0x40, cpl)
    noncanonical = b.read(0x8000_0000_0000, 0)
    res = machine.run(b)
    got = {k: outcome(res[i]) for k, i in at.items()}
    assert got == {
        ("r", 3, USER): "ok", ("w", 3, USER): "ok", ("f", 3, USER): "ok",
        ("r", 3, KERNEL): "#14:0x5", ("w", 3, KERNEL): "#14:0x7", ("f", 3, KERNEL): "#14:0x15",
        ("r", 3, NXPAGE): "ok", ("w", 3, NXPAGE): "ok", ("f", 3, NXPAGE): "#14:0x15",
        ("r", 3, HOLE): "#14:0x4", ("w", 3, HOLE): "#14:0x6", ("f", 3, HOLE): "#14:0x14",
        ("r", 0, USER): "ok", ("w", 0, USER): "ok", ("f", 0, USER): "ok",
        ("r", 0, KERNEL): "ok", ("w", 0, KERNEL): "#14:0x3", ("f", 0, KERNEL): "ok",
        ("r", 0, NXPAGE): "ok", ("w", 0, NXPAGE): "ok", ("f", 0, NXPAGE): "#14:0x11",
        ("r", 0, HOLE): "#14:0x0", ("w", 0, HOLE): "#14:0x2", ("f", 0, HOLE): "#14:0x10",
    }  # fmt: skip
    assert outcome(res[noncanonical]) == "#13:0x0"
    # the value read names the frame reached; the fetch ran that frame's stub; CR2 is exact
    assert res[at["r", 3, USER]].value == TAG | space.translate(USER)
    assert res[at["f", 0, KERNEL]].value == TAG | space.translate(KERNEL) | 0x40
    assert res[at["w", 3, KERNEL]].fault.cr2 == KERNEL + 8  # type: ignore[union-attr]
    assert {r.oracle for r in res if r.op.name in ("READ", "WRITE", "FETCH")} == {"tcg"}


def test_services_change_the_cpu_state_and_the_answers(machine: TcgMachine) -> None:
    space = small_space(machine)
    b = Batch()
    b.load_cr3(space.p4)
    smap_on = b.set_smap(True)
    smap = b.read(USER, 0)
    b.set_ac(True)
    smap_ac = b.read(USER, 0)
    b.set_ac(False)
    b.set_smap(False)
    b.set_wp(False)
    wp_off = b.write(KERNEL + 8, TAG, 0)
    b.set_wp(True)
    b.set_smep(True)
    smep = b.fetch(USER + 0x40, 0)
    b.set_smep(False)
    b.set_nxe(False)
    rsvd = b.read(NXPAGE)
    b.set_nxe(True)
    res = machine.run(b)
    assert res[smap_on].value >> 21 & 1
    assert outcome(res[smap]) == "#14:0x1" and outcome(res[smap_ac]) == "ok"
    assert outcome(res[wp_off]) == "ok"
    assert outcome(res[smep]) == "#14:0x11"
    assert outcome(res[rsvd]) == "#14:0xd"  # NX is a reserved bit without EFER.NXE


def test_a_thousand_faults_in_a_row_never_become_a_double_fault(machine: TcgMachine) -> None:
    """Unicorn never delivers an exception, so QEMU would promote the second #PF to #DF;
    the machine clears the exception in flight after each one."""
    space = small_space(machine)
    b = Batch()
    b.load_cr3(space.p4)
    b.reads([HOLE] * 500)
    for _ in range(250):
        b.read(HOLE, 0)
        b.write(KERNEL, 1)
    res = machine.run(b)
    assert {outcome(r) for r in res[1:501]} == {"#14:0x4"}
    assert {outcome(r) for r in res[501::2]} == {"#14:0x0"}
    assert {outcome(r) for r in res[502::2]} == {"#14:0x7"}


def test_reads_without_ram_see_the_machines_mmio_answer(machine: TcgMachine) -> None:
    space = small_space(machine)
    machine.mmio_read_value = lambda gpa: TAG | gpa
    b = Batch()
    b.load_cr3(space.p4)
    i = b.read(MMIO + 0x18)
    r = machine.run(b)[i]
    assert r.ok and r.value == TAG | (1 << 35) | 0x18
    assert machine.mmio_log and machine.mmio_log[0][0] == (1 << 35) | 0x18


def test_a_runaway_fetch_is_stopped_by_the_watchdog_and_the_machine_recovers() -> None:
    with TcgMachine(16 << 20, timeout=0.3) as m:
        space = small_space(m)
        m.memory.write(space.translate(USER) + 0x40, b"\xeb\xfe")  # jmp .
        b = Batch()
        b.load_cr3(space.p4)
        b.fetch(USER + 0x40)
        with pytest.raises(WatchdogTimeout, match=r"within 0\.3 s"):
            m.run(b)
        b = Batch()
        b.load_cr3(space.p4)
        i = b.read(USER)
        assert m.run(b)[i].ok


def test_an_exception_away_from_the_probe_is_a_crash_not_a_result(machine: TcgMachine) -> None:
    space = small_space(machine)
    machine.memory.write(space.translate(USER) + 0x40, b"\x90\x0f\x0b")  # nop; ud2
    b = Batch()
    b.load_cr3(space.p4)
    b.fetch(USER + 0x40)
    with pytest.raises(GuestCrashError, match="not at the probe's own instruction"):
        machine.run(b)
    b = Batch()
    b.load_cr3(space.p4)
    i = b.read(USER)
    assert machine.run(b)[i].ok


def test_the_agent_slot_and_bad_cr3_are_refused(machine: TcgMachine) -> None:
    b = Batch()
    b.read(machine.placement.base)
    with pytest.raises(AgentSlotConflict):
        machine.run(b)
    b = Batch()
    b.load_cr3(0x10_0000)
    with pytest.raises(Exception, match="does not map the agent"):
        machine.run(b)


def test_five_level_paging_can_be_switched_on(machine: TcgMachine) -> None:
    """The hook for 5-level layouts: CR4.LA57, a level-5 root, the agent in its last slot."""
    with TcgMachine(16 << 20, la57=True) as m:
        mem = m.memory
        frames = pte.FrameBump(mem, 0x10_0000, m.reserved[0])
        root = frames.alloc()
        space = pte.SimpleSpace(mem, frames)
        page = frames.alloc()
        mem.write_u64(page, TAG | page)
        va = 0x0003_0000_0040_0000  # level-5 slot 3: canonical only with 57-bit addresses
        space.map(va & ((1 << 48) - 1), page, pte.P | pte.U)
        mem.write_u64(root + 8 * 3, space.p4 | pte.P | pte.W | pte.U)
        m.install_agent_slot(root)
        b = Batch()
        b.load_cr3(root)
        ok, hole = b.read(va), b.read(va + (1 << 48))
        res = m.run(b)
        assert res[ok].value == TAG | page and outcome(res[hole]) == "#14:0x4"
        b = Batch()
        b.read(0xFFFF_0000_0000_0000)  # level-5 slot 511
        with pytest.raises(AgentSlotConflict):
            m.run(b)


def test_the_profile_was_tried_in_a_tcg_guest() -> None:
    p = tcg_profile()
    assert p.kind.value == "tcg" and p.cpl3_oracle == p.cpl0_oracle == "tcg"
    assert p.maxphyaddr == 40  # QEMU's TCG_PHYS_ADDR_BITS, as CPUID reports it
    for name in ("nx", "smep", "smap", "1gib-pages", "la57", "cpl3-every-pml4-slot"):
        assert p.supports(name), p.describe()
    assert "0x15" in p.features["nx"].evidence and "level-5" in p.features["la57"].evidence
    assert not p.cpl3_blocked_slots


def test_the_shipped_stub_matches_its_source() -> None:
    from kvmpage.machine.build import assemble
    from kvmpage.tcg.build import SOURCE, STUB_BIN

    assert assemble(SOURCE) == STUB_BIN.read_bytes()


def test_without_unicorn_the_oracle_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.import_module

    def no_unicorn(name: str, package: str | None = None) -> Any:
        if name.startswith("unicorn"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_unicorn)  # what the engine calls
    assert available() is not None and INSTALL_HINT in str(available())
    with pytest.raises(TcgUnavailable, match=r"pip install 'kvmpage\[tcg\]'"):
        TcgMachine()


# -- the verifier on TCG ---------------------------------------------------------------------


def built_on(spec: LayoutSpec, m: TcgMachine) -> BuiltLayout:
    spec = dataclasses.replace(spec, reserved_p4=spec.reserved_p4 | {m.agent_slot})
    return build(spec, m.memory, alloc_end=m.reserved[0])


def test_the_builtin_layout_with_its_1gib_page_verifies_under_tcg() -> None:
    spec = builtin_layout(gbpages=True)
    assert any(mp.size.SIZE == 1 << 30 for mp in spec.mappings)
    with TcgMachine(spec.memory_size) as m:
        built = built_on(spec, m)
        v = Verifier(built.mapper, m, cpu=spec.cpu, keep_results=True)
        report = v.verify()
        assert report.ok, report.format()
        assert set(report.oracles) == {"tcg"} and report.probes > 1000
        assert not report.unverified and report.entries_checked > 0
        huge = [r for p, _, r, _ in v.last_results if p.leaf is not None and p.leaf.size == 1 << 30]
        assert huge and any(r.ok for r in huge)


class IgnoresUserBit(Predictor):
    """A deliberately wrong software walk: every entry is believed user accessible."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e | int(F.USER_ACCESSIBLE) for e in entries), addrs


def test_a_wrong_prediction_is_caught_under_tcg() -> None:
    spec = builtin_layout(gbpages=True)
    with TcgMachine(spec.memory_size) as m:
        built = built_on(spec, m)
        report = verify(built.mapper, m, cpu=spec.cpu, predictor=IgnoresUserBit)
    assert not report.ok
    wrong = [d for d in report.disagreements if d.kind == "probe"]
    assert wrong and {d.oracle for d in wrong} == {"tcg"}
    assert all(d.cpl == 3 and "the CPU faulted" in d.why for d in wrong)
    assert "KVM_TRANSLATE" not in wrong[0].format()


def test_a_probe_that_depends_on_a_stale_tlb_is_not_checkable_never_passed() -> None:
    spec = builtin_layout(gbpages=True)
    with TcgMachine(spec.memory_size) as m:
        built = built_on(spec, m)
        mapper, alloc = built.mapper, built.allocator
        v = Verifier(mapper, m, cpu=spec.cpu)
        va = 0x60_0000  # user-data, 4 KiB pages
        assert v.verify(PlanOptions(extra=(va,))).ok
        page = Page[Size4KiB].containing_address(VirtAddr(va))
        frame = alloc.allocate_frame()
        assert frame is not None
        mapper.unmap(page)[1].ignore()  # no invlpg: a real TLB could still hold the old frame
        mapper.map_to(page, frame, F.PRESENT | F.WRITABLE | F.USER_ACCESSIBLE, alloc).ignore()
        report = v.verify(PlanOptions(extra=(va,)))
        assert report.ok and report.coverage.skipped.get(NOT_CHECKABLE, 0) >= 6
        assert not [va_ for va_, _, _ in v.last_checks if va_ >> 12 == va >> 12]
        # with the flush, the same page is checked again
        mapper.update_flags(page, F.PRESENT | F.USER_ACCESSIBLE).flush()
        report = v.verify(PlanOptions(extra=(va,)))
        assert report.ok and NOT_CHECKABLE not in report.coverage.skipped
        assert [ok for va_, _, ok in v.last_checks if va_ >> 12 == va >> 12].count(True) >= 6


def test_unflushed_changes_follow_the_architectures_flush_rules() -> None:
    pd, pt = 0x3000, 0x4000
    old = {pd: bytearray(4096), pt: bytearray(4096)}
    struct.pack_into("<Q", old[pd], 8 * 1, 0x20_0000 | 0x81)  # a 2 MiB leaf
    struct.pack_into("<Q", old[pt], 8 * 5, 0x9000 | 1)  # a 4 KiB leaf
    seen = {frame: bytes(data) for frame, data in old.items()}  # as the guest last saw them
    new = {pd: [0] * 512, pt: [0] * 512}
    new[pt][6] = 0xA000 | 1  # was not present: cannot be stale
    walk_4k = (0x1000, 0x2000, pd + 8 * 0, pt + 8 * 5)
    walk_2m = (0x1000, 0x2000, pd + 8 * 1)
    none = Unflushed.between(seen, new, [])
    assert none.stale(0x5000, walk_4k) and none.stale(0x20_0000 + 0x1F_F000, walk_2m)
    assert not none.stale(0x6000, (0x1000, 0x2000, pd, pt + 8 * 6))
    page = Unflushed.between(seen, new, [("invlpg", 0x5000)])
    assert not page.stale(0x5123, walk_4k) and page.stale(0x5123 + 4096, walk_4k)
    huge = Unflushed.between(seen, new, [("invlpg", 0x20_0000)])
    assert not huge.stale(0x3F_F000, walk_2m)  # the 2 MiB TLB entry held that address too
    assert not Unflushed.between(seen, new, [("flush_all", 0)]).stale(0x5000, walk_4k)


# -- the command line ------------------------------------------------------------------------


def test_verify_oracle_tcg_keeps_the_builtin_1gib_page(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", "--oracle", "tcg", "--device", "/nonexistent/kvm")
    assert code == 0 and err == "", err
    giant = next(line for line in out.splitlines() if line.endswith("giant-1g"))
    assert "1x1G" in giant and giant.split()[-2] == "ok"
    assert "tcg = CPL3 and CPL0 probes on QEMU's TCG" in out
    assert "1 GiB page is left out" not in out and "mmu" not in out
    assert out.splitlines()[-1].startswith("the TCG MMU agrees: ")
    code, doc = run_json(capsys, "verify", "--oracle", "tcg")
    assert code == 0 and doc["oracle"] == "tcg" and doc["ok"]
    assert set(doc["report"]["oracles"]) == {"tcg"}
    assert all(set(r["oracles"]) <= {"tcg"} for r in doc["runs"])
    assert any(r["page_size"] == 1 << 30 and r["verdict"] == "agree" for r in doc["runs"])


def test_verify_oracle_tcg_checks_a_layout_file_with_1gib_pages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    layout = tmp_path / "giant.toml"
    layout.write_text(
        'memory = "3G"\n[[mapping]]\nname = "giant"\nvirt = 0x80_0000_0000\nphys = 0x4000_0000\n'
        'page_size = "1G"\nflags = ["WRITABLE", "USER_ACCESSIBLE", "NO_EXECUTE"]\n'
    )
    code, doc = run_json(capsys, "verify", str(layout), "--oracle", "tcg")
    assert code == 0, doc["report"]["disagreements"][:2]
    (giant,) = [r for r in doc["runs"] if r["page_size"] == 1 << 30]
    assert giant["verdict"] == "agree" and giant["oracles"]["tcg"]["probes"] >= 12


def test_verify_oracle_tcg_reports_a_wrong_prediction_with_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", IgnoresNx)
    code, out, _ = run(capsys, "verify", "--oracle", "tcg")
    assert code == 1
    assert "DISAGREE [tcg] fetch@cpl3" in out and "tcg side (tables in guest memory" in out
    assert out.splitlines()[-1].startswith("THE TCG MMU DISAGREES: ")
    code, doc = run_json(capsys, "verify", "--oracle", "tcg")
    assert code == 1 and {d["oracle"] for d in doc["report"]["disagreements"]} == {"tcg"}


def test_without_kvm_the_default_oracle_says_so_and_suggests_tcg(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = str(tmp_path / "kvm")
    code, out, err = run(capsys, "verify", "--device", device)
    assert code == 2 and out == "" and "Traceback" not in err
    assert device in err and "--oracle tcg" in err and "kvmpage dump" in err
    for oracle in ("both",):
        code, doc = run_json(capsys, "verify", "--oracle", oracle, "--device", device)
        assert code == 2 and "--oracle tcg" in doc["error"]


def test_oracle_tcg_without_unicorn_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def no_unicorn(name: str, package: str | None = None) -> Any:
        if name.startswith("unicorn"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_unicorn)  # what the engine calls
    for argv in (["verify", "--oracle", "tcg"], ["host", "--oracle", "tcg"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.startswith(f"kvmpage {argv[0]}: error: --oracle tcg: ")
        assert "pip install 'kvmpage[tcg]'" in err


def test_host_oracle_tcg_needs_no_kvm(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "host", "--oracle", "tcg", "--device", "/nonexistent/kvm")
    assert code == 0 and err == ""
    assert "hypervisor: tcg" in out and "CPL0 accesses are checked by: tcg" in out
    table = out[out.index("what each oracle can check") :]
    assert "1gib-pages" in table and "kvm: cannot run here" in table
    code, doc = run_json(capsys, "host", "--oracle", "tcg", "--device", "/nonexistent/kvm")
    caps = doc["capabilities"]
    assert not caps["kvm"]["available"] and "/nonexistent/kvm" in caps["kvm"]["reason"]
    assert caps["tcg"]["checks"]["1gib-pages"] and caps["tcg"]["checks"]["la57"]
    assert not caps["tcg"]["checks"]["tlb"] and doc["maxphyaddr"] == 40


# -- both oracles ------------------------------------------------------------------------------


@pytest.mark.kvm
def test_both_oracles_agree_with_each_other_on_the_builtin_layout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "verify", "--oracle", "both")
    assert code == 0 and err == "", out
    head = next(line for line in out.splitlines() if "virtual start-end" in line)
    for column in ("mmu", "kvm-emulator", "tcg", "kvm-translate", "kvm-vs-tcg"):
        assert column in head
    assert "KVM vs TCG: " in out and ", 0 differ" in out
    code, doc = run_json(capsys, "verify", "--oracle", "both")
    assert code == 0 and doc["oracle"] == "both"
    compared = doc["oracles_compared"]
    assert compared["differ"] == 0 and compared["compared"] > 1000
    assert compared["compared"] == doc["report"]["oracles"]["tcg"]["probes"]
    assert doc["report"]["oracles"]["kvm-vs-tcg"]["disagree"] == 0


@pytest.mark.kvm
def test_a_difference_between_kvm_and_tcg_is_a_finding(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make TCG answer one CPL3 read wrongly (as a QEMU bug would): the report names both
    oracles, and the exit status is 1 even though KVM agrees with the software."""
    real_run = TcgMachine.run

    def buggy_run(self: TcgMachine, batch: Batch, **kw: Any) -> Any:
        res = real_run(self, batch, **kw)
        data = bytearray(res._data)
        for i, (op, addr, _) in enumerate(batch.commands()):
            if op == 0x101 and addr == 0x60_0000:  # read@cpl3 of user-data's first page
                struct.pack_into("<Q", data, i * 64 + 32, 0xBAD)
        return type(res)(bytes(data), len(res), "tcg", "tcg")

    monkeypatch.setattr(TcgMachine, "run", buggy_run)
    code, doc = run_json(capsys, "verify", "--oracle", "both")
    assert code == 1 and doc["oracles_compared"]["differ"] >= 1
    cross = [d for d in doc["report"]["disagreements"] if d["kind"] == "oracles"]
    assert cross and cross[0]["oracle"] == "kvm-vs-tcg" and cross[0]["va"] == "0x600000"
    assert cross[0]["expected"].startswith("kvm (mmu): ok")
    assert cross[0]["actual"] == "tcg (tcg): ok: value 0xbad"
    assert "kvm and tcg differ" in cross[0]["why"]
    assert not [d for d in doc["report"]["disagreements"] if d["oracle"] == "mmu"]


def test_tcg_sets_a_on_a_faulting_1gib_leaf_and_the_verifier_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A TCG deviation this oracle found (docs/tcg.md): QEMU sets the accessed bit of a 1 GiB
    leaf before its permission checks, so a CPL3-only run over the built-in layout's
    supervisor 1 GiB page leaves A set although every access faulted. Reported, not hidden."""
    code, doc = run_json(capsys, "verify", "--oracle", "tcg", "--cpl3-only")
    assert code == 1
    (ad,) = doc["report"]["disagreements"]
    assert ad["kind"] == "accessed-dirty" and ad["oracle"] == "tcg"
    assert ad["va"] == "0x8000000000" and "A set although no walk used this entry" in ad["why"]


def test_assert_hardware_agrees_on_the_tcg_oracle_needs_no_kvm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kvmpage.testing import HardwareDisagrees, assert_hardware_agrees

    layout = (
        'memory = "3G"\n[[mapping]]\nname = "giant"\nvirt = 0x80_0000_0000\n'
        'phys = 0x4000_0000\npage_size = "1G"\n'
        'flags = ["WRITABLE", "USER_ACCESSIBLE", "NO_EXECUTE"]\n'
    )
    report = assert_hardware_agrees(layout, oracle="tcg", device="/nonexistent/kvm")
    assert set(report.oracles) == {"tcg"} and report.ok
    monkeypatch.setattr(common, "PREDICTOR", IgnoresNx)
    with pytest.raises(HardwareDisagrees, match=r"DISAGREE \[tcg\] fetch"):
        assert_hardware_agrees(layout, oracle="tcg", device="/nonexistent/kvm")
