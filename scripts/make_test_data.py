"""Turn full Linux dumps (from scripts/make_linux_dump.py) into the test data the suite commits.

    python scripts/make_linux_dump.py --out /tmp/dumps          # 256 MiB per scenario, ~1 min
    python scripts/make_test_data.py /tmp/dumps tests/data/linux-6.1

For each scenario directory of the full dumps it writes, xz-compressed:

    tables.elf.xz    ``kvmpage image strip`` of dump.elf: every page-table page reachable
                     from the CR3 at the stop (and for ``pti`` its KPTI partner), and the notes
    info-tlb.txt.xz  QEMU's ``info tlb`` at that stop (the acceptance standard of ``dump``)
    info-mem.txt.xz  QEMU's ``info mem`` (left out when empty: QEMU 7.2's LA57 walk is broken)
    kdump-head.bin.xz  the first 64 KiB of the kdump-zlib dump (to test its rejection)
    meta.json        the scenario, kernel, QEMU and registers of the full dump (its sha256 too)

Tests never need QEMU: everything they compare is in these files.
"""

from __future__ import annotations

import argparse
import json
import lzma
import pathlib
import subprocess
import sys

SCENARIOS = ("pti", "nopti", "la57")


def xz(src: bytes, dst: pathlib.Path) -> None:
    dst.write_bytes(lzma.compress(src, preset=9 | lzma.PRESET_EXTREME))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dumps", type=pathlib.Path, help="--out directory of make_linux_dump.py")
    p.add_argument("out", type=pathlib.Path, help="where the test data goes")
    args = p.parse_args()
    for scenario in SCENARIOS:
        src = args.dumps / scenario
        if not (src / "dump.elf").exists():
            print(f"{scenario}: no dump.elf in {src}, skipped", file=sys.stderr)
            continue
        dst = args.out / scenario
        dst.mkdir(parents=True, exist_ok=True)
        stripped = dst / "tables.elf"
        extra = ["--kpti"] if scenario == "pti" else []
        subprocess.run(
            [sys.executable, "-m", "kvmpage.cli", "image", "strip", str(src / "dump.elf"),
             str(stripped), *extra],
            check=True,
        )  # fmt: skip
        xz(stripped.read_bytes(), dst / "tables.elf.xz")
        stripped.unlink()
        for name in ("info-tlb.txt", "info-mem.txt"):
            text = (src / name).read_bytes()
            if text.strip():
                xz(text, dst / f"{name}.xz")
        kdump = src / "dump.kdump-zlib"
        if kdump.exists():
            with kdump.open("rb") as f:
                xz(f.read(65536), dst / "kdump-head.bin.xz")
        meta = json.loads((src / "meta.json").read_text())
        keep = {k: meta[k] for k in ("scenario", "about", "kernel", "qemu", "registers_at_stop")
                if k in meta}  # fmt: skip
        keep["full_dump_sha256"] = meta.get("files", {}).get("dump.elf", {}).get("sha256")
        keep["regions"] = meta.get("regions", [])
        (dst / "meta.json").write_text(json.dumps(keep, indent=2) + "\n")
        print(f"{scenario}: {sorted(p.name for p in dst.iterdir())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
