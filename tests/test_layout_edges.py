"""The four edges of the two canonical halves, mapped from a layout file: the first and last
page of the lower half (0 and 0x7fff_ffff_f000, right below the non-canonical hole) and of the
upper half (0xffff_8000_0000_0000 and the top page 0xffff_ffff_ffff_f000). The last page of
each half could not be mapped: building computed the end of the range as the page after it,
which is not canonical (2**47) or does not exist (2**64). Each goes through load, build (and
translate), ``dump`` and ``verify`` on KVM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmpage.addr import VirtAddr
from kvmpage.cli import main
from kvmpage.cli.placement import agent_reserved
from kvmpage.layout.spec import build
from kvmpage.layout.toml_file import load_layout

EDGES = {
    "lower-first": 0x0,
    "lower-last": 0x7FFF_FFFF_F000,
    "upper-first": 0xFFFF_8000_0000_0000,
    "upper-last": 0xFFFF_FFFF_FFFF_F000,
}
# whole runs that end at each half's end: 2 MiB pages up to the hole, 4 KiB pages to the top
RUNS = {"below-hole-2m": (0x7FFF_FFA0_0000, "2M", 2), "top-4k": (0xFFFF_FFFF_FFFF_D000, "4K", 2)}


def _layout(tmp_path: Path) -> Path:
    lines = ['name = "edges"', "agent_slot = 300  # the top page lives in slot 511"]
    for name, virt in EDGES.items():
        user = ', "U"' if virt < 1 << 47 else ""
        lines += ["", "[[mapping]]", f'name = "{name}"', f"virt = {virt:#x}",
                  f'flags = ["W", "NX"{user}]']  # fmt: skip
    for name, (virt, size, count) in RUNS.items():
        lines += ["", "[[mapping]]", f'name = "{name}"', f"virt = {virt:#x}",
                  f'page_size = "{size}"', f"count = {count}"]  # fmt: skip
    path = tmp_path / "edges.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_edges_load_and_build(tmp_path: Path) -> None:
    spec = load_layout(_layout(tmp_path))
    built = build(spec, alloc_end=agent_reserved(spec.memory_size, 300)[0])
    try:
        for name, virt in EDGES.items():
            phys = built.mapper.translate_addr(VirtAddr(virt + 0xFFF))
            assert phys is not None and int(phys) == built.phys_of[name] + 0xFFF, name
        virt, _, _ = RUNS["below-hole-2m"]
        assert built.mapper.translate_addr(VirtAddr(0x7FFF_FFFF_FFFF)) is not None
        assert built.mapper.translate_addr(VirtAddr(0xFFFF_FFFF_FFFF_FFFF)) is not None
    finally:
        built.close()


def test_the_edges_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(_layout(tmp_path))
    assert main(["dump", path]) == 0
    out = capsys.readouterr().out
    for line in ("0x0000000000000000-0x0000000000000fff", "0x00007ffffffff000-0x00007fffffffffff",
                 "0xffff800000000000-0xffff800000000fff", "0xfffffffffffff000-0xffffffffffffffff",
                 "0x00007fffffa00000-0x00007fffffdfffff"):  # fmt: skip
        assert line in out, line
    assert main(["dump", path, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    ends = {r["virt_end"] for r in runs}
    assert {"0x7fffffffffff", "0xffffffffffffffff"} <= ends


@pytest.mark.kvm
def test_the_edges_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(_layout(tmp_path))
    assert main(["verify", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["report"]["disagreement_count"] == 0
    by_name = {name: r for r in doc["runs"] for name in r["mappings"]}
    for name in (*EDGES, *RUNS):
        assert by_name[name]["verdict"] == "agree", (name, by_name[name])
