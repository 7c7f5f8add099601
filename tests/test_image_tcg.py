"""``kvmpage verify --image FILE --oracle tcg|both``: a real kernel's own tables on QEMU's TCG
MMU, and on KVM and TCG side by side.

The 5-level Linux image is the reason for the tcg oracle here: KVM on this host cannot run
CR4.LA57, so its tables are checked on TCG only, and ``--oracle both`` says KVM did not run
(never a silent pass). Every test is bounded by the committed images' sizes (stripped tables:
about 80,000 probes per oracle), not by time. Their JSON documents are read, not validated
against the schema (validating some thousand runs takes minutes); the small layout's are.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from cli_support import run, run_json
from image_support import built_builtin, linux_image, sha256, write_image
from test_image_cli import _WrongFrames

from kvmpage.cli import common
from kvmpage.machine import Batch, pte
from kvmpage.machine.errors import AgentSlotConflict
from kvmpage.tcg import TcgMachine

TAG = 0x6B70 << 48


@pytest.fixture(scope="module")
def la57(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return linux_image("la57", tmp_path_factory.mktemp("la57"))


@pytest.fixture(scope="module")
def pti(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return linux_image("pti", tmp_path_factory.mktemp("pti"))


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    built = built_builtin()
    try:
        return write_image(built, tmp_path_factory.mktemp("tcg") / "builtin.elf")
    finally:
        built.close()


def test_a_memory_images_guest_agent_slot_and_ram_holes() -> None:
    """What a memory image's guest needs (kvmpage.verify.image_guest): the agent in a level-5
    slot other than 511 (a 5-level Linux uses 511 itself), and RAM with a hole that answers like
    KVM's MMIO exits: a read sees ``mmio_read_value``, a write is logged and dropped."""
    ram = [(0, 0x20_0000), (0x40_0000, 0x80_0000)]
    with TcgMachine(16 << 20, la57=True, agent_slot=3, ram=ram) as m:
        assert m.agent_slot == 3 and m.placement.base == 0x0003_FF80_0000_0000
        m.mmio_read_value = lambda gpa: TAG | gpa
        mem = m.memory
        hole = 0x30_0000
        assert not mem.contains(hole) and mem.contains(0x40_0000)
        frames = pte.FrameBump(mem, 0x10_0000, 0x20_0000)
        root = frames.alloc()
        space = pte.SimpleSpace(mem, frames)
        page = frames.alloc()
        mem.write_u64(page, TAG | page)
        va = 0xFFFF_FFFF_8000_0000  # level-5 slot 511, level-4 slot 511
        space.map(va & ((1 << 48) - 1), page, pte.P | pte.W)
        space.map((va + 0x1000) & ((1 << 48) - 1), hole, pte.P | pte.W)
        mem.write_u64(root + 8 * 511, space.p4 | pte.P | pte.W | pte.U)
        m.install_agent_slot(root)
        b = Batch()
        b.load_cr3(root)
        ram_read = b.read(va, cpl=0)
        hole_write = b.write(va + 0x1008, 5, cpl=0)
        hole_read = b.read(va + 0x1000, cpl=0)
        res = m.run(b)
        assert res[ram_read].value == TAG | page
        assert res[hole_read].value == TAG | hole and res[hole_write].ok
        assert any(gpa == hole + 8 and write for gpa, _, write, _ in m.mmio_log)
        b = Batch()
        b.read(0x0003_0000_0000_0000)  # the agent's level-5 slot
        with pytest.raises(AgentSlotConflict):
            m.run(b)
    with pytest.raises(ValueError, match="below the agent"):
        TcgMachine(16 << 20, ram=[(0, 16 << 20)])


def doc_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """The exit status and the JSON document of ``kvmpage ARGV --json`` (not validated)."""
    code, out, _ = run(capsys, *argv, "--json")
    doc: dict[str, Any] = json.loads(out)
    assert doc["exit_code"] == code
    return code, doc


def _only_tcg(doc: dict[str, Any]) -> None:
    """Every probe of the document is labelled tcg, and there were some."""
    oracles = doc["report"]["oracles"]
    assert set(oracles) == {"tcg"} and oracles["tcg"]["agree"] > 0
    assert all(set(r["oracles"]) <= {"tcg"} for r in doc["runs"])


def test_a_five_level_linux_on_tcg(capsys: pytest.CaptureFixture[str], la57: pathlib.Path) -> None:
    """The text report (the JSON one: the ``--oracle both`` test below, where only TCG runs)."""
    before = sha256(la57)
    code, out, _ = run(capsys, "verify", "--image", str(la57), "--oracle", "tcg")
    assert code == 0 and "the TCG MMU agrees" in out and " 0 disagree " in out
    assert "host: tcg (CPL3: tcg, CPL0: tcg)" in out and "CR4.LA57=1 (5-level paging)" in out
    assert "agent in top-level slot 510 " in out  # 511 is the kernel's (text, modules, fixmap)
    assert "High Kernel Mapping" in out and "columns: tcg = CPL3 and CPL0 probes" in out
    assert "not verified: 1 protection keys" in out and "probes not run: " in out
    assert "mmu" not in out.split("columns:", 1)[1]  # no KVM label anywhere in the report
    assert sha256(la57) == before


def test_a_kpti_linux_on_tcg(capsys: pytest.CaptureFixture[str], pti: pathlib.Path) -> None:
    code, doc = doc_of(capsys, "verify", "--image", str(pti), "--oracle", "tcg")
    assert code == 0 and doc["report"]["disagreement_count"] == 0
    _only_tcg(doc)
    assert any("protection keys" in gap for gap in doc["not_verified"])


def test_a_wrong_prediction_is_caught_on_tcg(
    capsys: pytest.CaptureFixture[str], la57: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", _WrongFrames)
    code, out, _ = run(capsys, "verify", "--image", str(la57), "--oracle", "tcg")
    assert code == 1 and "THE TCG MMU DISAGREES" in out and "FAIL(" in out
    assert "columns: tcg = " in out and "mmu" not in out


def test_a_layout_written_as_an_image_on_tcg(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    code, doc = run_json(capsys, "verify", "--image", str(elf), "--oracle", "tcg")
    assert code == 0 and doc["ok"] and doc["oracle"] == "tcg" and doc["oracles_not_run"] == {}
    _only_tcg(doc)
    assert all(r["verdict"] == "agree" for r in doc["runs"])


@pytest.mark.kvm
def test_both_on_a_layout_written_as_an_image(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    code, doc = run_json(capsys, "verify", "--image", str(elf), "--oracle", "both")
    assert code == 0 and doc["ok"] and doc["oracle"] == "both" and doc["oracles_not_run"] == {}
    compared = doc["oracles_compared"]
    assert compared["compared"] > 0 and compared["differ"] == 0
    oracles = doc["report"]["oracles"]
    assert {"mmu", "tcg", "kvm-vs-tcg"} <= set(oracles)
    assert oracles["tcg"]["agree"] == oracles["kvm-vs-tcg"]["agree"] == compared["compared"]
    code, out, _ = run(capsys, "verify", "--image", str(elf), "--oracle", "both")
    assert code == 0 and "hardware and the TCG MMU agree" in out and "KVM vs TCG: " in out


@pytest.mark.kvm
def test_both_on_a_five_level_image_says_kvm_did_not_run(
    capsys: pytest.CaptureFixture[str], la57: pathlib.Path
) -> None:
    """KVM here cannot run CR4.LA57: TCG runs alone, the report says KVM did not (never a
    silent pass), and ``--strict`` fails on it."""
    code, doc = doc_of(capsys, "verify", "--image", str(la57), "--oracle", "both", "--strict")
    assert code == 1 and doc["ok"] and doc["report"]["disagreement_count"] == 0
    assert "5-level" in doc["oracles_not_run"]["kvm"] and "oracles_compared" not in doc
    _only_tcg(doc)
    assert doc["context"]["levels"] == 5 and doc["guest"]["cpu"]["la57"]
    assert doc["guest"]["agent_slot"] == 510
    gaps = doc["not_verified"]
    assert any(gap.startswith("oracle kvm not run: ") for gap in gaps)
    assert any("protection keys" in gap for gap in gaps)
    assert any("not RAM" in gap for gap in gaps)


def test_walk_of_a_five_level_image_on_tcg(
    capsys: pytest.CaptureFixture[str], la57: pathlib.Path
) -> None:
    """``walk --image --oracle tcg`` probes a 5-level kernel's text on TCG (KVM cannot: exit 2
    naming --oracle tcg); the user probes fault, the kernel read reaches the frame."""
    va = "0xffffffff81000000"
    code, doc = run_json(capsys, "walk", "--image", str(la57), va, "--oracle", "tcg")
    assert code == 0 and doc["walk"]["steps"][0]["table"] == "PML5" and doc["kvm_translate"] is None
    probes = {(p["access"], p["cpl"]): p for p in doc["hardware"]}
    ran = [p for p in probes.values() if not p["skipped"]]
    assert len(probes) == 6 and len(ran) == 5 and all(p["oracle"] == "tcg" for p in ran)
    assert "not RAM" in probes[("fetch", 0)]["skipped"]  # (no code can come from an MMIO exit)
    user_read, kernel_read = probes[("read", 3)], probes[("read", 0)]
    assert user_read["agree"] and user_read["actual"].startswith("#PF(error 0x5)")
    assert kernel_read["agree"] and "reached physical 0x1000000" in kernel_read["actual"]
    code, _, err = run(capsys, "walk", "--image", str(la57), va)
    assert code == 2 and "--oracle tcg" in err
