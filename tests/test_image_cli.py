"""The image commands from the command line: text, JSON against the schema, errors, exit codes,
and the image file left untouched by every one of them. The ``kvm`` ones put a real kernel's
tables (and a layout written as an image) on the CPU."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from cli_support import run, run_json
from image_support import built_builtin, linux_image, sha256, write_image

from kvmpage.cli import common
from kvmpage.verify import Predictor
from kvmpage.verify.probes import Probe


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    built = built_builtin()
    try:
        return write_image(built, tmp_path_factory.mktemp("cli") / "builtin.elf")
    finally:
        built.close()


@pytest.fixture(scope="module")
def pti(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return linux_image("pti", tmp_path_factory.mktemp("pti"))


def test_image_info(capsys: pytest.CaptureFixture[str], pti: pathlib.Path) -> None:
    code, out, err = run(capsys, "image", "info", str(pti))
    assert code == 0 and err == ""
    assert "kernel: 6.1.0-57-amd64 (VMCOREINFO)" in out
    assert "CR3=0x4867000" in out and "CPL 3" in out and "SMEP=1, SMAP=1" in out
    assert "leaves: 66792 leaves (4K: 66789, 2M: 3)" in out
    assert "stripped by kvmpage" in out and "KPTI" in out
    code, doc = run_json(capsys, "image", "info", str(pti))
    assert doc["image"]["stripped"] and doc["vmcoreinfo"]["OSRELEASE"] == "6.1.0-57-amd64"
    assert doc["kernel_top_table"]["phys"] == "0x2a10000"


def test_strip_then_dump_the_same(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = sha256(elf)
    out = tmp_path / "small.elf"
    code, doc = run_json(capsys, "image", "strip", str(elf), str(out))
    assert code == 0 and doc["tables"] >= 10 and out.stat().st_size == doc["bytes"]
    _, full = run_json(capsys, "dump", "--image", str(elf))
    _, small = run_json(capsys, "dump", "--image", str(out))
    drop = ("in_image",)  # the stripped image holds no data frame
    strip = [{k: v for k, v in r.items() if k not in drop} for r in small["runs"]]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in full["runs"]]
    assert {r["in_image"] for r in small["runs"]} <= {"no", "partly"}
    code, _, err = run(capsys, "image", "strip", str(elf), str(elf))
    assert code == 2 and "never written" in err
    assert sha256(elf) == before


def test_dump_text_lists_regions_faults_and_findings(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    code, out, _ = run(capsys, "dump", "--image", str(elf))
    assert code == 0
    assert "CR3=0x1000" in out and "EFER=0xd01 (assumed)" in out and "--efer to change" in out
    assert "User Space" in out and "Kernel Space" in out
    assert "top-level slot 510 points back at the top-level table" in out
    assert "w+x-alias" in out and "table-writable" in out
    code, _, _ = run(capsys, "dump", "--image", str(elf), "--strict")
    assert code == 1
    code, _, _ = run(capsys, "dump", "--image", str(elf), "--strict", "--allow", "w+x-alias",
                     "--allow", "table-writable")  # fmt: skip
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dump", "--image", "/nonexistent.elf"], "cannot open"),
        (["dump", "examples/kernel.toml", "--image", "x.elf"], "not both"),
        (["dump", "--cr3", "0x1000"], "needs --image"),
        (["dump", "--format", "ptdump"], "needs --image"),
        (["verify", "--all-leaves"], "needs --image"),
        (["walk", "0x1000", "--cpu", "1"], "needs --image"),
        (["verify", "--image", "/nonexistent.elf", "--oracle", "tcg"], "cannot open"),
    ],
)
def test_bad_use_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
    code, doc = run_json(capsys, *argv)
    assert code == 2 and message in doc["error"]


def test_cr3_outside_the_image_and_a_bad_range(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    code, _, err = run(capsys, "dump", "--image", str(elf), "--cr3", "0x7fff0000")
    assert code == 2 and "not in the image" in err
    code, _, err = run(capsys, "dump", "--image", str(elf), "--range", "oops")
    assert code == 2 and "START-END" in err


def test_walk_software_only(capsys: pytest.CaptureFixture[str], elf: pathlib.Path) -> None:
    code, out, _ = run(capsys, "walk", "--image", str(elf), "0x601234", "--software-only")
    assert code == 0 and "-> physical 0xa234 (4 KiB page)" in out and "User Space" in out
    code, doc = run_json(capsys, "walk", "--image", str(elf), "0x800000000000", "--software-only")
    assert doc["walk"]["steps"] == [] and "not canonical" in doc["walk"]["stop"]


def test_no_traceback_when_the_reader_goes_away(elf: pathlib.Path) -> None:
    proc = subprocess.run(
        f"{sys.executable} -m kvmpage.cli dump --image {elf} | head -1",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and proc.stdout.startswith("image ")


# -- on the CPU --------------------------------------------------------------------------------


@pytest.mark.kvm
def test_verify_a_layout_written_as_an_image(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    before = sha256(elf)
    code, doc = run_json(capsys, "verify", "--image", str(elf))
    assert code == 0 and doc["ok"] and doc["report"]["disagreement_count"] == 0
    oracles = doc["report"]["oracles"]
    assert oracles["mmu"]["agree"] > 0 and oracles["kvm-emulator"]["agree"] > 0
    assert doc["guest"]["agent_slot"] != 510 and doc["guest"]["tables_copied"] >= 10
    assert all(r["verdict"] == "agree" for r in doc["runs"])
    assert sha256(elf) == before


@pytest.mark.kvm
def test_verify_a_real_kernels_tables(
    capsys: pytest.CaptureFixture[str], pti: pathlib.Path
) -> None:
    """KPTI user tables of Linux 6.1, stripped: every data frame is absent, so each access
    that reaches one is an MMIO exit whose address is compared."""
    before = sha256(pti)
    code, out, _ = run(capsys, "verify", "--image", str(pti))
    assert code == 0 and "hardware agrees" in out and "0 disagree" in out
    assert "ESPfix Area" in out and "coverage: " in out
    assert "protection keys (CR4.PKE)" in out  # what the guest could not run, said so
    assert sha256(pti) == before


class _WrongFrames(Predictor):
    """A software walk that is wrong on purpose: it believes every user page is 4 KiB further."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        if entries and probe.va < 1 << 47 and entries[-1] & 1:
            entries = (*entries[:-1], entries[-1] + 0x1000)
        return entries, addrs


@pytest.mark.kvm
def test_a_wrong_prediction_is_caught_on_an_image(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", _WrongFrames)
    code, out, _ = run(capsys, "verify", "--image", str(elf))
    assert code == 1 and "HARDWARE DISAGREES" in out and "FAIL(" in out


@pytest.mark.kvm
def test_walk_on_the_cpu_and_a_five_level_image(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    code, out, _ = run(capsys, "walk", "--image", str(elf), "0x601234")
    assert code == 0 and "read  cpl3  ok: reached physical 0xa000 (its tag)" in out
    la57 = linux_image("la57", tmp_path)
    code, _, err = run(capsys, "verify", "--image", str(la57))
    assert code == 2 and "5-level" in err


@pytest.mark.kvm
def test_strict_on_an_image_fails_on_what_was_not_verified(
    capsys: pytest.CaptureFixture[str], elf: pathlib.Path
) -> None:
    code, doc = run_json(capsys, "verify", "--image", str(elf), "--strict")
    assert code == 1 and doc["ok"] and doc["strict"]
    assert any("probes not run" in gap for gap in doc["not_verified"])
    code, out, _ = run(capsys, "verify", "--image", str(elf), "--strict")
    assert code == 1 and "NOT EVERYTHING WAS VERIFIED" in out and "coverage: " in out


@pytest.mark.parametrize("oracle", ["kvm", "tcg"])
def test_an_image_that_maps_nothing_is_not_a_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, oracle: str
) -> None:
    """Empty tables give no probe: exit 2 with the reason, as for a layout, never exit 0."""
    raw = tmp_path / "zero.raw"
    raw.write_bytes(bytes(1 << 20))
    argv = ("verify", "--image", str(raw), "--cr3", "0x1000", "--oracle", oracle)
    code, doc = run_json(capsys, *argv)
    assert code == 2 and not doc["report"]["oracles"]
    assert doc["error"] == "no probe ran: nothing was verified"
    code, out, err = run(capsys, *argv)
    assert code == 2 and "NOTHING VERIFIED" in out and "no probe ran" in err
