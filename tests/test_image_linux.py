"""Real Linux 6.1 guests (KPTI, KASLR, 5-level paging): kvmpage's listing against QEMU's own.

The acceptance standard of ``dump --image``: at the CR3 the CPU was using when the guest was
stopped, the set of (virtual page, physical frame, page size, leaf flags) that ``--json`` lists
is QEMU's ``info tlb`` exactly (accessed and dirty bits included), and the effective
user/writable ranges are ``info mem`` exactly. The images are stripped to their page tables
(tests/data, scripts/make_test_data.py): the listing does not need the memory they map.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from cli_support import VALIDATOR
from image_support import DATA, SCENARIOS, linux_image, sha256
from qemu_views import mem_of, pages_of, parse_mem, parse_tlb, read_xz

from kvmpage.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("linux")
    return {s: linux_image(s, d) for s in SCENARIOS}


def dump(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["dump", *argv, "--json"])
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    # (every run has the same schema: checking 75,000 of them would take minutes)
    VALIDATOR.validate({**doc, "runs": doc["runs"][:100] + doc["runs"][-100:]})
    assert doc["exit_code"] == code
    return doc


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_listing_is_qemus_info_tlb_exactly(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path], scenario: str
) -> None:
    before = sha256(images[scenario])
    doc = dump(capsys, "--image", str(images[scenario]))
    qemu = parse_tlb(read_xz(DATA / scenario / "info-tlb.txt.xz"))
    ours = pages_of(doc)
    assert len(ours) > 60_000  # espfix alone is 65,536 pages through shared tables
    assert ours == qemu  # the same pages, frames, flags (A/D too), in the same order
    mem = DATA / scenario / "info-mem.txt.xz"
    if mem.exists():  # (QEMU 7.2's `info mem` is broken under LA57: the file is empty)
        assert mem_of(doc) == parse_mem(read_xz(mem))
    assert doc["context"]["levels"] == (5 if scenario == "la57" else 4)
    assert doc["faults"] == []  # a real kernel's tables have no reserved bits set
    assert sha256(images[scenario]) == before


def test_the_guest_regions_have_the_rights_the_program_asked_for(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path]
) -> None:
    doc = dump(capsys, "--image", str(images["nopti"]))
    meta = json.loads((DATA / "nopti" / "meta.json").read_text())
    by_virt = {int(r["virt"], 16): r for r in doc["runs"]}
    rights = {r["name"]: r for r in meta["regions"]}
    expect = {"ro": "U r--", "rw": "U rw-", "exec": "U r-x", "wx": "U rwx", "huge": "U rw-"}
    for name, text in expect.items():
        run = by_virt[int(rights[name]["addr"], 16)]
        assert run["rights_text"] == text, name
    assert by_virt[int(rights["huge"]["addr"], 16)]["page_size"] == 2 << 20
    # the memfd mapped twice: the same frame through two addresses
    twice = by_virt[int(rights["shared-rw"]["addr"], 16)]["phys"]
    assert by_virt[int(rights["shared-ro"]["addr"], 16)]["phys"] == twice
    none = int(rights["none"]["addr"], 16)  # PROT_NONE: not present
    assert all(not int(r["virt"], 16) <= none <= int(r["virt_end"], 16) for r in doc["runs"])
    kinds = {f["kind"] for f in doc["audit"]}
    assert "w+x" in kinds and "table-writable" in kinds  # the wx region; the direct map


def test_kaslr_regions_are_placed_from_the_tables_or_named_as_unplaced(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path]
) -> None:
    doc = dump(capsys, "--image", str(images["nopti"]))
    assert doc["unplaced_regions"] == ["vmalloc() Area", "Vmemmap"]
    direct = [r for r in doc["runs"] if r["region"] == "Low Kernel Mapping"]
    assert direct and direct[0]["phys"] == "0x0" and direct[0]["rights_text"] == "K rw-"
    espfix = [r for r in doc["runs"] if r["region"] == "ESPfix Area"]
    assert len(espfix) == 65536 and len({r["phys"] for r in espfix}) < 8


def test_kpti_pair_diff_and_the_user_tables_audit(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path]
) -> None:
    path = str(images["pti"])
    assert main(["image", "info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(info)
    assert info["kpti_pair"] == "0x4866000" and info["context"]["cr3"] == "0x4867000"
    doc = dump(capsys, "--image", path, "--diff-cr3", "kpti")
    assert doc["exit_code"] == 1
    added = [c for c in doc["diff"]["changes"] if c["kind"] == "added"]
    assert any(c["new"]["rights_text"] == "K r-x" for c in added)  # the kernel's text
    kpti = [f for f in doc["audit"] if f["kind"] == "kpti-user-maps-kernel"]
    assert kpti and any("65536 pages" in f["message"] for f in kpti)  # espfix
    kernel = dump(capsys, "--image", path, "--cr3", "0x4866000")
    assert len(kernel["runs"]) > len(doc["runs"])


def test_ptdump_format_has_linuxs_markers_and_line_limit(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path]
) -> None:
    assert (
        main(["dump", "--image", str(images["pti"]), "--format", "ptdump", "--cr3", "4866000"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    markers = [line for line in out if line.startswith("---[")]
    assert markers[:2] == ["---[ User Space ]---", "---[ Kernel Space ]---"]
    assert "---[ High Kernel Mapping ]---" in markers
    assert any(line.startswith("... ") and "entries skipped" in line for line in out)  # espfix
    text = [line for line in out if line.startswith("0xffffffff81000000")]
    assert text and "ro" in text[0] and "PSE" in text[0] and text[0].endswith("pmd")


def test_five_level_walk_and_range(
    capsys: pytest.CaptureFixture[str], images: dict[str, pathlib.Path]
) -> None:
    path = str(images["la57"])
    assert main(["walk", "--image", path, "0x0080000000000000", "--software-only", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    assert [s["table"] for s in doc["walk"]["steps"]] == ["PML5", "PML4", "PDPT", "PD", "PT"]
    part = dump(capsys, "--image", path, "--range", "0x0080000000000000+4K")
    assert [r["virt"] for r in part["runs"]] == ["0x80000000000000"]
