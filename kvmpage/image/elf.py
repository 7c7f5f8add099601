"""ELF64 core files whose PT_LOAD segments carry physical addresses: QEMU ``dump-guest-memory``
(without ``-p``), ``virsh dump --memory-only --format=elf``, kdump vmcores in ELF form
(``/proc/vmcore`` copies, ``makedumpfile -E``), and kvmpage's own stripped images.

`parse_core` reads the headers and notes from the file's bytes (a read-only ``mmap``) and
checks everything against the file's size before anything is used, so a truncated or corrupt
file is an `ImageError` naming what is wrong, never an exception from deep inside.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmpage.image.errors import ImageError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EHDR = struct.Struct("<4sBBBBB7sHHIQQQIHHHHHH")  # 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # 56 bytes
SHDR = struct.Struct("<IIQQQQIIQQ")  # 64 bytes
NHDR = struct.Struct("<III")
#: Physical addresses end at 2**52 on x86-64.
PHYS_LIMIT = 1 << 52
_MACHINES = {3: "i386", 40: "ARM", 183: "AArch64", 243: "RISC-V", 22: "s390", 21: "PowerPC64"}


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD: ``filesz`` bytes at file ``offset`` are physical ``paddr`` onwards."""

    index: int
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int

    @property
    def end(self) -> int:
        """One past the last physical byte the file holds."""
        return self.paddr + self.filesz


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note: owner ``name`` (``"CORE"``, ``"QEMU"``, ``"VMCOREINFO"``...), ``type``,
    and its descriptor bytes."""

    name: str
    type: int
    desc: bytes


@dataclass
class ElfCore:
    """What an ELF core holds: its memory segments (sorted, disjoint) and notes."""

    segments: list[LoadSegment]
    notes: list[Note]
    #: segments left out, with the reason (a kernel-text view inside a RAM segment...)
    dropped: list[str] = field(default_factory=list)


def parse_core(path: str, data: bytes | memoryview) -> ElfCore:
    """Parse the ELF64 core in ``data`` (the whole file). Raises `ImageError`."""
    size = len(data)
    if size < EHDR.size:
        raise ImageError(path, f"truncated: {size} bytes, an ELF header needs {EHDR.size}")
    (magic, cls, order, _ver, _abi, _abiv, _pad, e_type, machine, _e_version, _entry, phoff,
     shoff, _flags, _ehsize, phentsize, phnum, shentsize, _shnum, _shstrndx) = EHDR.unpack_from(
        bytes(data[: EHDR.size]))  # fmt: skip
    if magic != ELF_MAGIC:
        raise ImageError(path, "not an ELF file")
    if cls == ELFCLASS32:
        raise ImageError(
            path,
            "a 32-bit ELF core (ELFCLASS32): kvmpage reads ELFCLASS64 cores of x86-64 guests in "
            "long mode (QEMU writes ELF32 for a guest outside long mode)",
        )
    if cls != ELFCLASS64:
        raise ImageError(path, f"ELF class {cls} is neither 32- nor 64-bit: a corrupt header")
    if order == ELFDATA2MSB:
        raise ImageError(path, "a big-endian ELF core: kvmpage reads little-endian x86-64 cores")
    if order != ELFDATA2LSB:
        raise ImageError(path, f"ELF data encoding {order} is unknown: a corrupt header")
    if e_type != ET_CORE:
        raise ImageError(path, f"an ELF file of type {e_type}, not a core dump (ET_CORE = 4)")
    if machine != EM_X86_64:
        name = _MACHINES.get(machine, f"machine {machine}")
        raise ImageError(path, f"an ELF core for {name}: kvmpage reads x86-64 (EM_X86_64) cores")
    if phentsize != PHDR.size:
        raise ImageError(path, f"program headers of {phentsize} bytes (ELF64 has {PHDR.size})")
    if phnum == PN_XNUM:  # more than 65534 headers: the real count is in section header 0
        if shoff == 0 or shentsize != SHDR.size or shoff + SHDR.size > size:
            raise ImageError(path, "e_phnum says PN_XNUM but section header 0 is missing")
        phnum = SHDR.unpack_from(bytes(data[shoff : shoff + SHDR.size]))[7]
    if phoff + phnum * PHDR.size > size:
        raise ImageError(
            path, f"truncated: {phnum} program headers at offset {phoff:#x} end past the file's "
            f"{size:#x} bytes",
        )  # fmt: skip
    headers = bytes(data[phoff : phoff + phnum * PHDR.size])
    loads: list[LoadSegment] = []
    notes: list[Note] = []
    for i in range(phnum):
        p_type, _pf, offset, vaddr, paddr, filesz, memsz, _align = PHDR.unpack_from(
            headers, i * PHDR.size
        )
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if offset + filesz > size:
            what = f"segment {i} (physical {paddr:#x})" if p_type == PT_LOAD else f"note {i}"
            raise ImageError(
                path,
                f"truncated: {what} ends at file offset {offset + filesz:#x}, the file has "
                f"{size:#x} bytes",
            )
        if p_type == PT_NOTE:
            notes += _notes(path, i, bytes(data[offset : offset + filesz]))
            continue
        if filesz > memsz:
            raise ImageError(path, f"segment {i}: p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if paddr + memsz > PHYS_LIMIT:
            raise ImageError(
                path, f"segment {i}: physical {paddr:#x}+{memsz:#x} is beyond the 52-bit "
                "physical address space",
            )  # fmt: skip
        if filesz:
            loads.append(LoadSegment(i, paddr, vaddr, offset, filesz, memsz))
    if not loads:
        raise ImageError(path, "the ELF core has no memory (no PT_LOAD segment with data)")
    segments, dropped = _disjoint(path, loads)
    return ElfCore(segments, notes, dropped)


def _notes(path: str, header: int, blob: bytes) -> list[Note]:
    """The notes of one PT_NOTE segment."""
    out = []
    pos = 0
    while pos + NHDR.size <= len(blob):
        namesz, descsz, ntype = NHDR.unpack_from(blob, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(blob):
            raise ImageError(
                path, f"note segment {header}: the note at byte {pos} runs past the segment "
                f"({namesz} + {descsz} bytes in {len(blob) - pos})",
            )  # fmt: skip
        name = blob[name_at : name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
        out.append(Note(name, ntype, blob[desc_at : desc_at + descsz]))
        pos = end
    return out


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _disjoint(path: str, loads: list[LoadSegment]) -> tuple[list[LoadSegment], list[str]]:
    """Sort by physical address; drop segments that lie inside another (a kdump vmcore's
    kernel-text view of RAM it also dumps whole); refuse partial overlaps."""
    ordered = sorted(loads, key=lambda s: (s.paddr, -s.filesz))
    kept: list[LoadSegment] = []
    dropped: list[str] = []
    for seg in ordered:
        if kept and seg.paddr < kept[-1].end:
            outer = kept[-1]
            if seg.end <= outer.end:
                dropped.append(
                    f"segment {seg.index} (physical {seg.paddr:#x}-{seg.end - 1:#x}, virtual "
                    f"{seg.vaddr:#x}) lies inside segment {outer.index}: read once, from there"
                )
                continue
            raise ImageError(
                path,
                f"segments {outer.index} and {seg.index} overlap in physical memory "
                f"({outer.paddr:#x}-{outer.end - 1:#x} and {seg.paddr:#x}-{seg.end - 1:#x}): "
                "a dump taken with paging (dump-guest-memory -p) lists virtual mappings; take "
                "one without -p",
            )
        kept.append(seg)
    return kept, dropped
