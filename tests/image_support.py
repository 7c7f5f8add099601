"""Memory images for the tests: the committed Linux ones, and images written from layouts.

``linux_image("pti")`` gives the stripped page tables of a real Linux 6.1 guest (tests/data,
made by scripts/make_test_data.py). `write_image` writes a layout kvmpage built as an ELF core
(with a QEMU CPU note), a LiME file or raw memory, so every format can be checked against the
layout's own scan.
"""

from __future__ import annotations

import hashlib
import lzma
import pathlib
import struct
from collections.abc import Sequence

from kvmpage.image.elf import Note
from kvmpage.image.notes import CpuRegisters, encode_qemu_cpu
from kvmpage.image.strip import write_core
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import BuiltLayout, build

DATA = pathlib.Path(__file__).parent / "data" / "linux-6.1"
SCENARIOS = ("pti", "nopti", "la57")
CR0, CR4 = 0x8005_0033, 0x6A0


def linux_image(scenario: str, into: pathlib.Path) -> pathlib.Path:
    """The stripped tables of ``scenario``, decompressed into directory ``into``."""
    path = into / f"{scenario}.elf"
    if not path.exists():
        path.write_bytes(lzma.decompress((DATA / scenario / "tables.elf.xz").read_bytes()))
    return path


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_builtin() -> BuiltLayout:
    """The built-in layout (2 MiB pages, no 1 GiB page), built in a plain memory."""
    return build(builtin_layout(gbpages=False))


def segments_of(built: BuiltLayout, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, bytes]]:
    return [(a, built.memory.read(a, b - a)) for a, b in ranges]


def write_image(
    built: BuiltLayout,
    path: pathlib.Path,
    fmt: str = "elf",
    *,
    ranges: Sequence[tuple[int, int]] | None = None,
    cr3: int | None = None,
    notes: Sequence[Note] | None = None,
) -> pathlib.Path:
    """``built``'s memory (or just ``ranges`` of it) as an image file of format ``fmt``:
    ``"elf"`` (with a QEMU note holding CR0/CR3/CR4), ``"lime"`` or ``"raw"``."""
    size = built.memory.size
    ranges = list(ranges) if ranges is not None else [(0, 0xA0000), (0x100000, size)]
    if fmt == "raw":
        path.write_bytes(built.memory.read(0, size))
        return path
    segments = segments_of(built, ranges)
    if fmt == "lime":
        with path.open("wb") as f:
            for start, data in segments:
                f.write(struct.pack("<IIQQ8s", 0x4C69_4D45, 1, start, start + len(data) - 1,
                                    bytes(8)))  # fmt: skip
                f.write(data)
        return path
    regs = CpuRegisters(0, "test", CR0, 0, built.p4_phys if cr3 is None else cr3, CR4)
    all_notes = [Note("QEMU", 0, encode_qemu_cpu(regs))] if notes is None else list(notes)
    write_core(str(path), segments, all_notes)
    return path
