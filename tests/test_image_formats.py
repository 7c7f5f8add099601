"""Memory images as physical memory: ELF cores, LiME, raw; their CPU state; what is refused.

Every format is written from a layout kvmpage built (`image_support.write_image`), so what the
image reader finds can be compared with the layout's own scan. No KVM needed.
"""

from __future__ import annotations

import json
import lzma
import os
import pathlib
import struct

import pytest
from image_support import CR0, CR4, DATA, built_builtin, sha256, write_image

from kvmpage.addr import PhysAddr, VirtAddr
from kvmpage.image import ImageError, ReadOnlyImageError, open_image
from kvmpage.image.elf import PHDR, Note
from kvmpage.image.notes import CpuRegisters, encode_qemu_cpu
from kvmpage.image.strip import strip, write_core
from kvmpage.layout.dump import runs_of
from kvmpage.memory import AbsentMemoryError, ReadOnlyMemoryError
from kvmpage.paging import Page, PhysFrame, PoolFrameAllocator, Size4KiB
from kvmpage.paging.leaves import Leaves
from kvmpage.paging.walk import ABSENT

USER_DATA = 0x601234  # a user data page of the built-in layout


@pytest.fixture(scope="module")
def builtin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The built-in layout as an ELF core, a LiME file and raw memory, and its runs."""
    d = tmp_path_factory.mktemp("builtin")
    built = built_builtin()
    try:
        paths = {fmt: write_image(built, d / f"b.{fmt}", fmt) for fmt in ("elf", "lime", "raw")}
        (d / "p4").write_text(hex(built.p4_phys))
        runs = runs_of(Leaves.scan(built.memory, built.p4_phys))
        (d / "runs").write_text(repr(runs))
    finally:
        built.close()
    return {**paths, "dir": d}


def test_every_format_lists_what_the_layout_maps(builtin: dict[str, pathlib.Path]) -> None:
    expected = (builtin["dir"] / "runs").read_text()
    p4 = int((builtin["dir"] / "p4").read_text(), 16)
    for fmt in ("elf", "lime", "raw"):
        with open_image(builtin[fmt]) as image:
            ctx = image.context(cr3=p4) if fmt != "elf" else image.context()
            assert ctx.root == p4
            assert repr(runs_of(image.leaves(ctx))) == expected, fmt
    with open_image(builtin["elf"]) as image:
        assert image.format == "elf" and "QEMU" in image.description
        assert next((s.start, s.end) for s in image.segments) == (0, 0xA0000)
        assert image.cpus[0].cr3 == p4 and image.cpus[0].cr0 == CR0


def test_absent_memory_is_not_zero(builtin: dict[str, pathlib.Path]) -> None:
    with open_image(builtin["elf"]) as image:
        assert image.memory.contains(0x9F000) and not image.memory.contains(0xA0000)
        with pytest.raises(AbsentMemoryError, match="not in the image"):
            image.memory.read_u64(0xB0000)
        # the direct map covers 0..64 MiB: its run has frames the image does not hold
        ctx = image.context()
        assert image.walk(0xFFFF_8880_000B_0000, ctx).mapped


def test_a_table_outside_the_image_ends_the_walk(tmp_path: pathlib.Path) -> None:
    built = built_builtin()
    try:
        p4 = built.p4_phys
        # keep only the level-4 table: every walk stops at level 3
        path = write_image(built, tmp_path / "t.elf", ranges=[(p4, p4 + 4096)])
    finally:
        built.close()
    with open_image(path) as image:
        w = image.walk(USER_DATA)
        assert w.stop == ABSENT and w.level == 4 and "not in memory" in w.reason
        leaves = image.leaves(skip_top=frozenset({510}))  # (510: the recursive slot)
        assert len(leaves) == 0 and leaves.faults and {f.kind for f in leaves.faults} == {"absent"}


def test_raw_memory_needs_cr3(builtin: dict[str, pathlib.Path]) -> None:
    with open_image(builtin["raw"]) as image, pytest.raises(ImageError, match="--cr3"):
        image.context()


def test_opening_maps_and_does_not_read(tmp_path: pathlib.Path) -> None:
    big = tmp_path / "sparse.raw"
    with big.open("wb") as f:  # 8 GiB, all holes on disk: reading it would take seconds
        f.truncate(8 << 30)
        f.seek((7 << 30) + 8)
        f.write(struct.pack("<Q", 0x1234))
    before = (big.stat().st_mtime_ns, big.stat().st_size)
    with open_image(big) as image:
        assert image.memory.read_u64((7 << 30) + 8) == 0x1234
        assert image.memory_bytes == 8 << 30
    assert (big.stat().st_mtime_ns, big.stat().st_size) == before


# -- the CPU state -----------------------------------------------------------------------------


def _core(path: pathlib.Path, notes: list[Note], data: bytes = bytes(0x4000)) -> pathlib.Path:
    write_core(str(path), [(0, data)], notes)
    return path


def _qemu(cr3: int, cr4: int = CR4, cr0: int = CR0) -> Note:
    return Note("QEMU", 0, encode_qemu_cpu(CpuRegisters(0, "t", cr0, 0, cr3, cr4)))


def test_pcid_bits_are_masked_and_shown(tmp_path: pathlib.Path) -> None:
    path = _core(tmp_path / "p.elf", [_qemu(0x1000 | 0x5, CR4 | 1 << 17)])
    with open_image(path) as image:
        ctx = image.context()
        assert ctx.root == 0x1000 and ctx.pcid == 5 and "PCID 0x5" in ctx.describe()


def test_overrides_and_assumptions_say_where_each_value_came_from(tmp_path: pathlib.Path) -> None:
    path = _core(tmp_path / "o.elf", [_qemu(0x1000)])
    with open_image(path) as image:
        ctx = image.context(cr3=0x2000, efer=0x500)
        assert ctx.sources == {"cr3": "option", "cr0": "image", "cr4": "image", "efer": "option"}
        assert not ctx.cpu.nxe
        assumed = image.context()
        assert assumed.sources["efer"] == "assumed"
        assert any("EFER assumed 0xd01" in n and "--efer" in n for n in assumed.notes)
        with pytest.raises(ImageError, match="paging is off"):
            image.context(cr0=0x11)
        with pytest.raises(ImageError, match=r"CPUs 0\.\.0"):
            image.context(cpu=3)
        assert image.context(cr4=CR4 | 1 << 12).levels == 5
        with pytest.raises(ImageError, match="top-level table at 0x8000 is not in the image"):
            image.leaves(image.context(cr3=0x8000))


def test_vmcoreinfo_names_the_kernel_table_when_no_note_has_cr3(tmp_path: pathlib.Path) -> None:
    prstatus = bytearray(336)
    struct.pack_into("<Q", prstatus, 112 + 8 * 17, 0x10)  # cs
    info = b"OSRELEASE=6.1.0-test\nSYMBOL(init_top_pgt)=ffffffff82a10000\nNUMBER(phys_base)=0x-1\n"
    bad = _core(
        tmp_path / "bad.elf", [Note("CORE", 1, bytes(prstatus)), Note("VMCOREINFO", 0, info)]
    )
    with open_image(bad) as image, pytest.raises(ImageError, match="--cr3"):
        image.context()  # an unreadable phys_base: no guess
    info = info.replace(b"0x-1", b"0xffffffffff801000")  # phys_base is negative in two's complement
    good = _core(
        tmp_path / "k.elf", [Note("CORE", 1, bytes(prstatus)), Note("VMCOREINFO", 0, info)]
    )
    with open_image(good) as image:
        assert image.kernel_release == "6.1.0-test" and image.cpus[0].cpl == 0
        assert "kdump" in image.description
        ctx = image.context()
        expected = 0x2A1_0000 - 0x7F_F000  # phys_base -0x7ff000
        assert ctx.cr3 == expected and ctx.sources["cr3"] == "vmcoreinfo"


# -- refused -----------------------------------------------------------------------------------


def _mutated(src: pathlib.Path, dst: pathlib.Path, at: int, data: bytes) -> pathlib.Path:
    raw = bytearray(src.read_bytes())
    raw[at : at + len(data)] = data
    dst.write_bytes(raw)
    return dst


@pytest.mark.parametrize(
    ("at", "data", "message"),
    [
        (4, b"\x01", "32-bit ELF core"),
        (5, b"\x02", "big-endian"),
        (18, struct.pack("<H", 183), "AArch64"),
        (16, struct.pack("<H", 2), "not a core dump"),
        (54, struct.pack("<H", 40), "program headers of 40 bytes"),
        (32, struct.pack("<Q", 1 << 40), "truncated: .* program headers"),
    ],
)
def test_elf_headers_that_are_refused(
    builtin: dict[str, pathlib.Path], tmp_path: pathlib.Path, at: int, data: bytes, message: str
) -> None:
    path = _mutated(builtin["elf"], tmp_path / "m.elf", at, data)
    with pytest.raises(ImageError, match=message) as info:
        open_image(path)
    assert str(path) in str(info.value)


def _phdr_at(path: pathlib.Path, i: int) -> int:
    return 64 + i * PHDR.size


def test_segments_past_the_end_or_overlapping_are_refused(
    builtin: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    src = builtin["elf"]
    cut = tmp_path / "cut.elf"
    cut.write_bytes(src.read_bytes()[: 1 << 20])
    with pytest.raises(ImageError, match="truncated: segment 2"):
        open_image(cut)
    # segment 2 (0x100000..) made to start inside segment 1 (0..0xa0000): a partial overlap
    over = _mutated(src, tmp_path / "over.elf", _phdr_at(src, 2) + 24, struct.pack("<Q", 0x90000))
    with pytest.raises(ImageError, match=r"overlap.*-p"):
        open_image(over)
    big = _mutated(src, tmp_path / "big.elf", _phdr_at(src, 1) + 40, struct.pack("<Q", 0x1000))
    with pytest.raises(ImageError, match="p_filesz"):
        open_image(big)


def test_a_segment_inside_another_is_read_once(tmp_path: pathlib.Path) -> None:
    built = built_builtin()
    try:
        mem = built.memory
        segments = [(0, mem.read(0, 0x400000)), (0x200000, mem.read(0x200000, 0x1000))]
        path = tmp_path / "k.elf"
        write_core(str(path), segments, [_qemu(built.p4_phys)])
    finally:
        built.close()
    with open_image(path) as image:
        assert len(image.segments) == 1 and image.dropped and "inside segment" in image.dropped[0]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"KDUMP   \x06\x00\x00\x00", "compressed kdump.*makedumpfile -E"),
        (b"PAGEDU64", "Windows crash dump"),
        (b"\x1f\x8b\x08\x00", "gunzip"),
    ],
)
def test_formats_that_are_refused_by_name(
    tmp_path: pathlib.Path, head: bytes, message: str
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(head + bytes(4096))
    with pytest.raises(ImageError, match=message):
        open_image(path)


def test_qemu_kdump_output_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "k.bin"
    path.write_bytes(lzma.decompress((DATA / "pti" / "kdump-head.bin.xz").read_bytes()))
    with pytest.raises(ImageError, match="flattened makedumpfile"):
        open_image(path)


def test_files_that_are_not_images(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(empty)
    with pytest.raises(ImageError, match="cannot open"):
        open_image(tmp_path / "missing")
    with pytest.raises(ImageError):
        open_image(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [(0, 0x1234, "magic"), (4, 2, "version 2"), (16, 0x1000, "ends .* before it starts")],
)
def test_lime_headers_that_are_refused(
    builtin: dict[str, pathlib.Path], tmp_path: pathlib.Path, field: int, value: int, message: str
) -> None:
    second = 32 + 0xA0000  # the header of the second range (the first is 0..0x9ffff)
    fmt = "<I" if field < 8 else "<Q"
    path = _mutated(builtin["lime"], tmp_path / "m.lime", second + field, struct.pack(fmt, value))
    with pytest.raises(ImageError, match=message):
        open_image(path)
    cut = tmp_path / "cut.lime"
    cut.write_bytes(builtin["lime"].read_bytes()[: second + 100])
    with pytest.raises(ImageError, match="truncated"):
        open_image(cut)


# -- read-only, the private copy, strip --------------------------------------------------------


def test_an_image_is_read_only_and_its_translate_is_the_crates(
    builtin: dict[str, pathlib.Path],
) -> None:
    with open_image(builtin["elf"]) as image:
        with pytest.raises(ReadOnlyMemoryError, match="writable=True"):
            image.memory.write_u64(0x1000, 0)
        tables = image.tables()
        assert tables.translate_addr(VirtAddr(USER_DATA)) is not None
        with pytest.raises(ReadOnlyImageError, match="map_to"):
            tables.map_to(None, None, 0, None)
        with pytest.raises(ReadOnlyImageError):
            _ = tables.mapper


def test_a_private_copy_takes_mapping_changes_and_the_file_stays(
    builtin: dict[str, pathlib.Path],
) -> None:
    before = sha256(builtin["elf"])
    with open_image(builtin["elf"], writable=True) as image:
        mapper = image.tables().mapper
        alloc: PoolFrameAllocator[Size4KiB]
        alloc = PoolFrameAllocator(0x3F0_0000, 0x3F8_0000, memory=image.memory)
        page: Page[Size4KiB] = Page.containing_address(VirtAddr(0x5000_0000))
        frame: PhysFrame[Size4KiB] = PhysFrame.containing_address(PhysAddr(0x3F8_0000))
        mapper.map_to(page, frame, 0x7, alloc).ignore()
        assert image.walk(0x5000_0123).phys == 0x3F8_0123
    with open_image(builtin["elf"]) as image:
        assert not image.walk(0x5000_0123).mapped
    assert sha256(builtin["elf"]) == before


def test_strip_keeps_the_tables_and_the_listing(
    builtin: dict[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "s.elf"
    with open_image(builtin["elf"]) as image:
        ctx = image.context()
        counts = strip(image, [ctx], str(out))
        full = repr(runs_of(image.leaves(ctx)))
    assert out.stat().st_size < 200_000 and counts["tables"] >= 10
    with open_image(out) as small:
        assert repr(runs_of(small.leaves())) == full
        assert small.kvmpage_note["stripped"] and small.cpus[0].efer == 0xD01
        assert small.memory_bytes == counts["tables"] * 4096
        assert json.dumps(small.kvmpage_note)  # plain JSON
    assert os.path.getsize(out) == counts["bytes"]
