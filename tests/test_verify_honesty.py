"""Nothing unchecked reads as passed: ``kvmpage verify`` says what it probed (the ``coverage:``
line, and the same numbers in JSON), ``--all`` probes every page with the full set, and
``--strict`` fails on anything left unverified: sampled pages, probes not run, features of the
layout this host cannot check, W+X findings. A run in which no probe ran is exit status 2.

The issue's case: in a 20,000-page layout 19,704 pages were only read at CPL3, so a wrong
prediction about writes to page 10,007 passed without a word."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpage.cli import common, main
from kvmpage.paging.access import AccessKind
from kvmpage.verify import Predictor, Probe

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).parent.parent
VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((ROOT / "docs" / "json-schema.json").read_text())
)
HEAP = 0x1000_0000
WRONG_PAGES = {HEAP + 10_007 * 4096, HEAP + 2_007 * 4096}


class WrongAboutOneWrite(Predictor):
    """Believes pages 10,007 and 2,007 are read-only: their writes are predicted to fault."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        wrong = probe.va & ~0xFFF in WRONG_PAGES and probe.access is AccessKind.WRITE
        if wrong and entries:
            entries = (*entries[:-1], entries[-1] & ~2)
        return entries, addrs


def _layout(tmp_path: Path, length: str = "80000K") -> str:
    """A heap of 4 KiB pages (20,000 by default)."""
    path = tmp_path / f"heap-{length}.toml"
    path.write_text(
        'memory = "128M"\n[[mapping]]\nname = "heap"\nvirt = 0x1000_0000\n'
        f'length = "{length}"\nflags = ["W", "U", "NX"]\n'
    )
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, dict[str, Any]]:
    code = main(list(argv))
    text = capsys.readouterr().out
    code_json = main([*argv, "--json"])
    doc = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    assert code_json == code == doc["exit_code"]
    return code, text, doc


def test_sampling_is_visible_and_strict_fails_on_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", WrongAboutOneWrite)
    layout = _layout(tmp_path)
    assert main(["verify", layout]) == 0  # every probe that ran agreed ...
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("coverage: "))
    assert line.startswith("coverage: 20000 pages; probed (read/write/fetch) at CPL3 20000/296/296")
    assert "sampled: 296 pages got every probe, the other 19704 a CPL3 read only" in line
    assert main(["verify", layout, "--strict", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    cov = doc["report"]["coverage"]  # ... and the JSON has the same numbers
    assert cov["pages"] == 20000 and not cov["complete"]
    assert cov["probed"]["read@cpl3"] == 20000 and cov["probed"]["write@cpl0"] == 296
    assert doc["not_verified"] == ["19704 of 20000 pages sampled, not fully probed"]
    assert doc["exit_code"] == 1 and doc["strict"] and not doc["report"]["disagreements"]


def test_strict_says_why_in_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layout = _layout(tmp_path, "12000K")
    assert main(["verify", layout, "--strict", "--cpl3-only"]) == 1
    lines = capsys.readouterr().out.splitlines()
    strict = next(line for line in lines if line.startswith("--strict: not verified: "))
    assert "of 3000 pages sampled, not fully probed; no CPL0 probe (--cpl3-only)" in strict
    assert "NOT EVERYTHING WAS VERIFIED (--strict)" in lines[-1]


def test_all_probes_every_page_and_finds_what_sampling_missed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PREDICTOR", WrongAboutOneWrite)
    layout = _layout(tmp_path, "12000K")  # 3,000 pages: sampled by default, quick with --all
    assert main(["verify", layout]) == 0  # page 10,007 is not in it: sampling misses it
    capsys.readouterr()
    code = main(["verify", layout, "--all", "--json"])
    doc = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    assert code == 1 == doc["exit_code"]
    vas = {int(d["va"], 16) & ~0xFFF for d in doc["report"]["disagreements"]}
    assert vas == {HEAP + 2_007 * 4096}
    cov = doc["report"]["coverage"]
    assert cov["complete"] and set(cov["probed"].values()) == {3000}


def test_the_built_in_layout_says_what_did_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, doc = _run(capsys, "verify")
    assert code == 0
    assert any(line.startswith("coverage: ") for line in text.splitlines())
    assert "probes not run: " in text
    gaps = doc["not_verified"]
    assert any("probes not run (reaches a page-table frame)" in g for g in gaps)
    assert any(g.startswith("audit: 3 findings (table-writable 1, w+x-alias 2)") for g in gaps)
    code, text, doc = _run(capsys, "verify", "--strict")
    assert code == 1 and doc["report"]["ok"] and doc["ok"]


def test_cpl3_only_is_not_complete(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text('[[mapping]]\nvirt = 0x400000\nflags = ["W", "U", "NX"]\n')
    code, text, doc = _run(capsys, "verify", str(path))
    assert code == 0 and doc["report"]["coverage"]["complete"] and doc["not_verified"] == []
    assert run_strict(capsys, str(path)) == 0  # everything verified: strict passes
    code, text, doc = _run(capsys, "verify", str(path), "--cpl3-only")
    assert code == 0 and "CPL0 not probed (--cpl3-only)" in text
    assert "no CPL0 probe (--cpl3-only)" in doc["not_verified"]
    assert run_strict(capsys, str(path), "--cpl3-only") == 1


def run_strict(capsys: pytest.CaptureFixture[str], *argv: str) -> int:
    code = main(["verify", *argv, "--strict"])
    capsys.readouterr()
    return code


def test_probes_not_run_are_listed_and_fail_strict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A window onto the page tables: every probe through it would write a table, so none
    runs; exit 0 says nothing about them, the output does, and --strict fails."""
    path = tmp_path / "window.toml"
    path.write_text(
        '[[mapping]]\nname = "tables"\nvirt = 0x400000\nphys = 0x0\nlength = "64K"\n'
        'flags = ["W", "NX"]\n'
    )
    code, text, doc = _run(capsys, "verify", str(path))
    assert code == 0 and "probes not run: " in text and "(reaches a page-table frame)" in text
    skipped = doc["report"]["coverage"]["skipped"]
    assert skipped and any(g.endswith("(reaches a page-table frame)") for g in doc["not_verified"])
    assert run_strict(capsys, str(path)) == 1


def test_no_probe_at_all_is_not_a_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmpage.machine import host_profile
    from kvmpage.verify import verifier
    from kvmpage.verify.probes import Coverage, Plan

    blocked = host_profile().cpl3_blocked_slots
    if blocked:  # this host keeps PML4 slots from CPL3: a CPL3-only run there probes nothing
        slot = min(blocked)
        path = tmp_path / "blocked.toml"
        virt = slot << 39 | (0xFFFF << 48 if slot >= 256 else 0)
        agent = 300 if slot != 300 else 301
        path.write_text(f'agent_slot = {agent}\n[[mapping]]\nvirt = {virt:#x}\nflags = ["W"]\n')
        code, text, doc = _run(capsys, "verify", str(path), "--cpl3-only")
        assert code == 2 and doc["error"] == "no probe ran: nothing was verified"
        assert text.splitlines()[-1].startswith("NOTHING VERIFIED")
    # on any host: a plan with no probe at all (KVM_TRANSLATE alone is no check)
    empty = Plan([], Coverage())
    monkeypatch.setattr(verifier, "make_plan", lambda leaves, options, **kw: empty)
    code, text, doc = _run(capsys, "verify")
    assert code == 2 and doc["error"] == "no probe ran: nothing was verified" and doc["ok"]
