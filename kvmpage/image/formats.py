"""Telling memory-image formats apart, LiME's range headers, and the formats kvmpage refuses.

A format is recognised by its first bytes. A file with no known header is raw physical memory
from address 0 (``pmemsave``, LiME ``--format padded``, a hypervisor's ``.vmem``); such a file
says nothing about the CPU, so walking it needs ``--cr3``.
"""

from __future__ import annotations

import struct

from kvmpage.image.errors import ImageError

ELF = "elf"
LIME = "lime"
RAW = "raw"
FORMATS = (ELF, LIME, RAW)

LIME_MAGIC = 0x4C69_4D45  # "EMiL" on disk
LIME_HEADER = struct.Struct("<IIQQ8s")  # magic, version, s_addr, e_addr (inclusive), reserved

#: First bytes of formats kvmpage does not read, what they are, and how to get an ELF core.
_REFUSED: tuple[tuple[bytes, str], ...] = (
    (b"KDUMP   ", "a compressed kdump file (makedumpfile's default kdump-compressed format, or "
                  "QEMU dump-guest-memory -z/-l/-s): kvmpage reads ELF cores; take the dump in "
                  "ELF form with 'makedumpfile -E' from /proc/vmcore, or with QEMU's "
                  "dump-guest-memory without -z, -l or -s"),
    (b"DISKDUMP", "a diskdump file: kvmpage reads ELF cores; take the dump with "
                  "'makedumpfile -E' from /proc/vmcore"),
    (b"makedumpfile", "a flattened makedumpfile stream: 'makedumpfile -R OUT < FILE' rebuilds "
                      "a kdump-compressed file, which kvmpage does not read either; take the "
                      "dump with 'makedumpfile -E' (ELF)"),
    (b"PAGEDU64", "a Windows crash dump (64-bit): kvmpage reads ELF cores, LiME and raw memory"),
    (b"PAGEDUMP", "a Windows crash dump (32-bit): kvmpage reads ELF cores, LiME and raw memory"),
    (b"\xd2\xbe\xd2\xbe", "a VMware suspend/snapshot state file: use the raw .vmem file beside "
                          "it with --cr3"),
    (b"\x1f\x8b", "a gzip-compressed file: decompress it first (gunzip)"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file: decompress it first (unzstd)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file: decompress it first (unxz)"),
)  # fmt: skip


def detect(path: str, head: bytes) -> str:
    """The format of a file starting with ``head`` (at least 16 bytes when the file has them).

    Raises `ImageError` for a format that is recognised and refused.
    """
    if head.startswith(b"\x7fELF"):
        return ELF
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == LIME_MAGIC:
        return LIME
    for magic, why in _REFUSED:
        if head.startswith(magic):
            raise ImageError(path, why)
    return RAW


def lime_ranges(path: str, data: bytes | memoryview) -> list[tuple[int, int, int]]:
    """``(physical start, file offset, length)`` of every range of a LiME file, in file order.

    Every header is checked (magic, version 1, start <= end, data inside the file) before any
    range is used.
    """
    size = len(data)
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < size:
        if pos + LIME_HEADER.size > size:
            raise ImageError(
                path, f"truncated: a LiME range header at offset {pos:#x} needs "
                f"{LIME_HEADER.size} bytes, {size - pos} remain",
            )  # fmt: skip
        magic, version, start, end, _ = LIME_HEADER.unpack_from(bytes(data[pos : pos + 32]))
        if magic != LIME_MAGIC:
            raise ImageError(
                path, f"the LiME header at offset {pos:#x} has magic {magic:#x}, not "
                f"{LIME_MAGIC:#x} (a corrupt file, or a range longer than its header says)",
            )  # fmt: skip
        if version != 1:
            raise ImageError(path, f"LiME version {version} at offset {pos:#x} (kvmpage reads 1)")
        if end < start:
            raise ImageError(path, f"LiME range at offset {pos:#x} ends ({end:#x}) before it "
                                   f"starts ({start:#x})")  # fmt: skip
        length = end - start + 1
        at = pos + LIME_HEADER.size
        if at + length > size:
            raise ImageError(
                path, f"truncated: the LiME range {start:#x}-{end:#x} needs {length:#x} bytes at "
                f"offset {at:#x}, the file has {size:#x}",
            )  # fmt: skip
        out.append((start, at, length))
        pos = at + length
    if not out:
        raise ImageError(path, "an empty LiME file")
    return out
