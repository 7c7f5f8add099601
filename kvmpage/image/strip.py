"""Small ELF cores: an image's page-table pages and notes only (``kvmpage image strip``).

A stripped image holds every table reachable from the chosen CR3s, byte for byte, and the
notes (CPU state, VMCOREINFO), and none of the memory those tables map: a user can share the
layout of their kernel's address space in a bug report without its contents, and tests can
commit real layouts. Everything kvmpage lists from the full image it lists identically from the
stripped one (a leaf's frame is simply not in it). A ``KVMPAGE`` note records EFER (which
QEMU's note lacks), the CR3s kept and where the image came from.

`write_core` is the writer: an ELF64 core whose PT_LOAD data sits at file offsets congruent to
the physical addresses modulo the page size (so the file could be mapped page by page).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Sequence

from kvmpage.image.context import PagingContext
from kvmpage.image.elf import EHDR, ELF_MAGIC, EM_X86_64, ET_CORE, PHDR, PT_LOAD, PT_NOTE, Note
from kvmpage.image.image import Image
from kvmpage.image.notes import KVMPAGE_NOTE, QEMU_NOTE, CpuRegisters, encode_qemu_cpu
from kvmpage.paging.leaves import table_frames

PAGE = 4096


def encode_note(note: Note) -> bytes:
    """One ELF note: header, name (NUL-terminated, padded to 4), descriptor (padded to 4)."""
    name = note.name.encode() + b"\0"
    head = struct.pack("<III", len(name), len(note.desc), note.type)
    return head + _pad4(name) + _pad4(note.desc)


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def write_core(path: str, segments: Sequence[tuple[int, bytes]], notes: Iterable[Note]) -> int:
    """Write an ELF64 x86-64 core with ``segments`` (physical address, bytes) and ``notes``;
    returns the file's size. Written to a temporary name and renamed, so a failure never
    leaves half a file under ``path``."""
    blob = b"".join(encode_note(n) for n in notes)
    count = 1 + len(segments)
    phoff = EHDR.size
    note_off = phoff + count * PHDR.size
    offset = -(-(note_off + len(blob)) // PAGE) * PAGE
    headers = [PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(blob), len(blob), 4)]
    placed = []
    for paddr, data in segments:
        offset += (paddr - offset) % PAGE  # congruent to the physical address
        headers.append(PHDR.pack(PT_LOAD, 6, offset, 0, paddr, len(data), len(data), PAGE))
        placed.append((offset, data))
        offset += len(data)
    ident = (ELF_MAGIC, 2, 1, 1, 0, 0, bytes(7))
    header = EHDR.pack(*ident, ET_CORE, EM_X86_64, 1, 0, phoff, 0, 0, EHDR.size, PHDR.size,
                       count, 0, 0, 0)  # fmt: skip
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(b"".join(headers))
            f.write(blob)
            for at, data in placed:
                f.seek(at)
                f.write(data)
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


def _runs(frames: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted frames as ``(start, end)`` runs of contiguous pages."""
    out: list[list[int]] = []
    for f in sorted(set(frames)):
        if out and out[-1][1] == f:
            out[-1][1] = f + PAGE
        else:
            out.append([f, f + PAGE])
    return [(a, b) for a, b in out]


def strip(image: Image, contexts: Sequence[PagingContext], out: str) -> dict[str, int]:
    """Write to ``out`` the tables reachable from each of ``contexts`` and the image's notes,
    the first context's registers in CPU note ``contexts[0].cpu_index``. Returns counts:
    ``tables``, ``segments``, ``bytes`` (the new file's size)."""
    memory = image.memory
    frames: set[int] = set()
    for ctx in contexts:
        frames.update(table_frames(memory, ctx.root, levels=ctx.levels))
    segments = []
    for start, end in _runs(f for f in frames if memory.contains(f, PAGE)):
        segments.append((start, memory.read(start, end - start)))
    first = contexts[0]
    cpus = list(image.cpus) or [CpuRegisters(0, "kvmpage note")]
    chosen = first.cpu_index or 0
    notes: list[Note] = []
    for i, regs in enumerate(cpus):
        if i == chosen:
            regs = CpuRegisters(i, regs.source, first.cr0, regs.cr2, first.cr3, first.cr4,
                                first.efer, regs.regs)  # fmt: skip
        notes.append(Note(QEMU_NOTE, 0, encode_qemu_cpu(regs)))
    efers = [first.efer if i == chosen else (c.efer or first.efer) for i, c in enumerate(cpus)]
    if image.vmcoreinfo:
        text = "".join(f"{k}={v}\n" for k, v in image.vmcoreinfo.items())
        notes.append(Note("VMCOREINFO", 0, text.encode()))
    record = {
        "stripped": True,
        "source": os.path.basename(image.path),
        "source_format": image.description,
        "cr3s": [hex(c.cr3) for c in contexts],
        "efer": efers,
        "tables": len(frames),
        "sources": first.sources,
    }
    notes.append(Note(KVMPAGE_NOTE, 1, json.dumps(record, sort_keys=True).encode()))
    size = write_core(out, segments, notes)
    return {"tables": len(frames), "segments": len(segments), "bytes": size}
