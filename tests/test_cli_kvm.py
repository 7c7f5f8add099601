"""The ``kvmpage`` commands that run on /dev/kvm: verify, walk, host."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import VALIDATOR, IgnoresNx, run, run_json

from kvmpage.cli import common, main
from kvmpage.machine import host_profile
from kvmpage.paging.access import Outcome
from kvmpage.verify import APIC_FETCH, Predictor, Probe

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def wrong_software(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "PREDICTOR", IgnoresNx)


def test_verify_builtin_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("layout 'builtin': offset mapper")
    assert lines[1].startswith("host: ") and "cpu: CR0.WP=1" in lines[1]
    assert host_profile().cpl3_oracle in lines[2] and "kvm-translate" in lines[2]
    row = next(line for line in lines if line.startswith("0x0000000000600000"))
    assert "U rw-" in row and row.split()[-2:] == ["ok", "user-data"]
    assert not any("FAIL(" in line for line in lines if line.startswith("0x"))
    assert any(line.startswith("recursive slot 510:") for line in lines)
    assert any(line.startswith("holes: ") for line in lines)
    assert lines[-1].startswith("hardware agrees: ") and " 0 disagree" in lines[-1]
    assert "audit: 3 findings (table-writable 1, w+x-alias 2); details: kvmpage dump" in lines
    if not host_profile().supports("1gib-pages"):
        assert "0x0000008000000000" not in out  # the 1 GiB page is left out where unverifiable
        assert "the built-in layout's 1 GiB page is left out" in out


def test_verify_json_counts_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "verify")
    assert code == 0 and doc["ok"] and doc["report"]["ok"]
    per_oracle: dict[str, int] = {}
    for item in [*doc["runs"], doc["holes"]]:
        for oracle, c in item["oracles"].items():
            per_oracle[oracle] = per_oracle.get(oracle, 0) + c["probes"]
    assert per_oracle == {k: v["probes"] for k, v in doc["report"]["oracles"].items()}
    assert all(r["verdict"] == "agree" for r in doc["runs"] if not r["recursive_slot"])
    assert [f["kind"] for f in doc["audit"]] == ["w+x-alias", "w+x-alias", "table-writable"]


def test_verify_reports_a_disagreement_with_exit_1(
    capsys: pytest.CaptureFixture[str], wrong_software: None
) -> None:
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert "FAIL(" in out and "DISAGREE [" in out and "HARDWARE DISAGREES" in out
    code, doc = run_json(capsys, "verify")
    assert code == 1 and not doc["ok"]
    failed = [r for r in doc["runs"] if r["verdict"] == "disagree"]
    assert failed and all(not r["rights"]["executable"] for r in failed)
    assert any(r["verdict"] == "agree" for r in doc["runs"])  # executable runs still agree


@pytest.mark.parametrize(
    "name", ["kernel.toml", "kernel-hardened.toml", "recursive.toml", "smap.toml", "wx-alias.toml"]
)
def test_verify_examples(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, doc = run_json(capsys, "verify", str(EXAMPLES / name))
    assert code == 0, doc["report"]["disagreements"][:1]
    assert doc["layout"]["source"].endswith(name)


def test_verify_refuses_a_page_size_the_host_cannot_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if host_profile().supports("1gib-pages"):
        pytest.skip("this host verifies 1 GiB pages")
    layout = tmp_path / "giant.toml"
    layout.write_text(
        'memory = "4G"\n[[mapping]]\nname = "giant"\nvirt = 0x80_0000_0000\nphys = 0x4000_0000\n'
        'page_size = "1G"\n'
    )
    before = len(os.listdir("/proc/self/fd"))
    code, out, err = run(capsys, "verify", str(layout))
    assert code == 2 and out == ""
    assert f"{layout}: [[mapping]] #1 (giant), key 'page_size': this host cannot verify 1GiB" in err
    assert len(os.listdir("/proc/self/fd")) == before
    assert run(capsys, "dump", str(layout))[0] == 0  # software dumps it fine


def test_failed_verify_leaves_no_machine_behind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 400 pages one GiB apart: each needs its own level-2 and level-1 table, three frames a
    # page, which 8M cannot hold; the load-time bound counts only the pages (it fits), so the
    # machine is started and the tables run out while it builds them
    layout = tmp_path / "big.toml"
    layout.write_text('memory = "8M"\n' + "".join(
        f'[[mapping]]\nname = "p{i}"\nvirt = {(i + 1) << 30:#x}\n' for i in range(400)
    ))  # fmt: skip
    main(["verify", str(layout)])  # the first run may open cached host state
    capsys.readouterr()
    before = len(os.listdir("/proc/self/fd"))
    code, _, err = run(capsys, "verify", str(layout))
    assert code == 2 and f"{layout}: [[mapping]] #" in err and "Traceback" not in err
    assert "no 0x1000 bytes" in err or "FrameAllocationFailed" in err, err
    assert len(os.listdir("/proc/self/fd")) == before


def test_walk_probes_the_hardware(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "walk", "0x601234")
    assert code == 0
    assert "PT   [  1]" in out and "hardware, probing the page 0x601000" in out
    assert "read  cpl3  ok: reached physical 0xa000 (its tag)" in out
    assert "fetch cpl3  #PF(error 0x15) at 0x601040" in out
    assert out.count(" agree") == 6
    assert "KVM_TRANSLATE (kvm-translate, addresses only): 0xa234" in out
    code, doc = run_json(capsys, "walk", "0x603000")
    assert code == 0 and len(doc["hardware"]) == 6 and doc["kvm_translate"] is None
    assert all(h["agree"] and h["actual"].startswith("#PF") for h in doc["hardware"])


def test_walk_into_a_page_table_does_not_probe_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "walk", "0xffff888000001000")
    assert code == 0
    skipped = [h for h in doc["hardware"] if h["agree"] is None]
    assert {(h["access"], h["cpl"]) for h in skipped} == {("read", 0), ("write", 0)}
    assert all("page-table" in h["skipped"] for h in skipped)


def test_walk_disagreement_exits_1(
    capsys: pytest.CaptureFixture[str], wrong_software: None
) -> None:
    code, out, _ = run(capsys, "walk", "0x601234")
    assert code == 1 and "DISAGREE" in out and "software:" in out


def test_host(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "host")
    assert code == 0
    assert "CPL3 accesses are checked by: " in out and "CPL0 accesses are checked by: " in out
    assert "1gib-pages" in out and "how: " in out
    assert "verifiable here: 4K and 2M pages" in out
    code, doc = run_json(capsys, "host")
    profile = host_profile()
    assert doc["oracles"] == {"cpl3": profile.cpl3_oracle, "cpl0": profile.cpl0_oracle}
    assert doc["features"]["nx"]["works"] == profile.supports("nx")


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("kvmpage")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvmpage.cli"]


def test_console_script_verify_is_valid() -> None:
    """The installed command end to end (its speed is measured by scripts/bench_cli.py and
    ``hyperfine``, not asserted here)."""
    proc = subprocess.run([*_script(), "verify", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert VALIDATOR.is_valid(json.loads(proc.stdout)) and proc.stderr == ""
    text = subprocess.run([*_script(), "verify", "-q"], capture_output=True, text=True)
    assert text.returncode == 0 and "hardware agrees" in text.stdout and text.stderr == ""


def test_walk_in_the_agent_slot_is_not_probed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "walk", "0xffffff8000000000")
    assert code == 0 and "guest agent's: not probed" in out
    code, doc = run_json(capsys, "walk", "0xffffff8000000000")
    assert code == 0 and doc["hardware"] == []


def test_verify_with_the_agent_moved(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layout = tmp_path / "moved.toml"
    layout.write_text(
        'agent_slot = 300\n[[mapping]]\nname = "top"\nvirt = 0xffff_ff80_0000_0000\n'
        'flags = ["W", "NX"]\n'
    )
    code, doc = run_json(capsys, "verify", str(layout))
    assert code == 0 and doc["runs"][0]["virt"] == "0xffffff8000000000"
    assert doc["runs"][0]["oracles"]["mmu"]["probes"] > 0


def test_readme_library_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python", readme.index("## The library")) + len("```python")
    code = readme[start : readme.index("```", start)]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "PhysAddr(0x200123)" in out and " 0 disagree" in out


def test_layout_doc_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "docs" / "layout.md").read_text()
    blocks = text.split("```python\n")[1:]
    code = "\n".join(block.split("```", 1)[0] for block in blocks)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(code, "docs/layout.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "PhysAddr(0x5000)" in out and " 0 disagree" in out


def test_nxe_off_makes_nx_a_reserved_bit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    layout = tmp_path / "nonx.toml"
    layout.write_text(
        '[cpu]\nnxe = false\n[[mapping]]\nname = "a"\nvirt = 0x400000\nflags = ["W", "U"]\n'
        '[[mapping]]\nname = "nx"\nvirt = 0x600000\nflags = ["W", "U", "NX"]\n'
    )
    code, out, _ = run(capsys, "verify", str(layout))
    assert code == 0 and "EFER.NXE=0" in out
    code, out, _ = run(capsys, "walk", "0x600000", str(layout))
    assert code == 0 and "reserved bit" in out


class NoDirty(Predictor):
    """A deliberately wrong model: writes never set D."""

    def evaluate(self, entries: tuple[int, ...], probe: Probe) -> Outcome:
        out = super().evaluate(entries, probe)
        return dataclasses.replace(out, d_must=frozenset())


def test_accessed_dirty_disagreements_are_counted_apart(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", NoDirty)
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert "accessed/dirty bits: " in out and "entries disagree" in out
    assert "DISAGREE [" in out and "D set although no write" in out


def test_fuzz_command_prints_its_seed_and_agrees(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # bounded by --cases (the time budget is far away), so every machine checks the same cases
    bounds = ["--seconds", "600", "--save", str(tmp_path)]
    code, doc = run_json(capsys, "fuzz", "--seed", "11", "--cases", "3", *bounds)
    assert code == 0 and doc["seed"] == 11 and doc["failures"] == []
    assert doc["cases"] == 3 and doc["steps"] == 3 * 12 and doc["probes"] > 0
    code, out, err = run(capsys, "fuzz", "--seed", "11", "--cases", "1", *bounds)
    assert code == 0 and "seed 11" in err and "1 cases" in out and "0 disagreeing cases" in out


def test_fuzz_command_saves_a_reproducer_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, wrong_software: None
) -> None:
    code, doc = run_json(
        capsys, "fuzz", "--seed", "3", "--cases", "5", "--seconds", "30", "--save", str(tmp_path)
    )
    assert code == 1 and doc["failures"]
    first = doc["failures"][0]
    assert first["reproducer"] and Path(first["reproducer"]).is_file()
    assert len(first["operations"]) <= 3
    # the file is the campaign's own reproducer: a layout file naming the case
    text = Path(first["reproducer"]).read_text()
    assert f"case seed {first['case_seed']}," in text and "[[mapping]]" in text


def test_frames_where_the_host_answers_mmio_are_no_false_alarm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """RAM at the local APIC's and the IOAPIC's addresses (a guest above 4 GiB): this host's
    emulator sends CPL0 accesses to the APIC page to MMIO anyway; the exit's address is the
    translation, answered with its tag, so the verdict is the CPU's, not the tool's artefact."""
    layout = tmp_path / "apic.toml"
    layout.write_text(
        'name = "apic"\nmemory = "4608M"\n'
        '[[mapping]]\nname = "lapic"\nvirt = 0x400000\nphys = 0xfee00000\nflags = ["W", "U"]\n'
        '[[mapping]]\nname = "ioapic"\nvirt = 0x401000\nphys = 0xfec00000\nflags = ["W"]\n'
    )
    code, doc = run_json(capsys, "verify", str(layout))
    assert code == 0 and doc["report"]["disagreement_count"] == 0
    assert doc["report"]["coverage"]["skipped"] == {APIC_FETCH: 1}  # the CPL0 fetch, said so


def test_a_higher_half_kernel_layout_verifies_with_the_agent_elsewhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    layout = tmp_path / "minus2g.toml"
    layout.write_text(
        '[[mapping]]\nname = "text"\nvirt = 0xffffffff80000000\npage_size = "2M"\ncount = 2\n'
        '[[mapping]]\nname = "top"\nvirt = 0xfffffffffffff000\nflags = ["W", "NX"]\n'
    )
    code, out, _ = run(capsys, "verify", str(layout))
    assert code == 0 and "agent in level-4 slot 510 (511 is the layout's)" in out
