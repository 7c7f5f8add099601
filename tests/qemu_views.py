"""QEMU's own views of a guest's page tables (HMP ``info tlb`` / ``info mem``), parsed, and the
same views computed from ``kvmpage dump --image --json``, so tests can compare them exactly.

``info tlb`` prints one line per present leaf: ``VA: PA XGPDACTUW`` (the leaf entry's NX, G,
PS, D, A, PCD, PWT, U, W; PS is masked out of 4 KiB entries, where bit 7 is PAT). ``info mem``
prints the ranges of equal effective U/W (ANDed over the walk), whatever their frames.
"""

from __future__ import annotations

import lzma
import pathlib
from typing import Any

DATA = pathlib.Path(__file__).parent / "data" / "linux-6.1"
_BITS = ((63, "X"), (8, "G"), (7, "P"), (6, "D"), (5, "A"), (4, "C"), (3, "T"), (2, "U"), (1, "W"))

Page = tuple[int, int, str]  # virtual page, physical frame, the 9 flag characters


def read_xz(path: pathlib.Path) -> str:
    return lzma.decompress(path.read_bytes()).decode()


def parse_tlb(text: str) -> list[Page]:
    out = []
    for line in text.splitlines():
        va, rest = line.split(": ")
        pa, flags = rest.split()
        out.append((int(va, 16), int(pa, 16), flags))
    return out


def parse_mem(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, "urw")`` ranges; an end printed as 0 (QEMU's 1 << 48 made canonical) is
    the top of the address space."""
    out = []
    for line in text.splitlines():
        span, _size, prot = line.split()
        a, b = (int(x, 16) for x in span.split("-"))
        out.append((a, b if b > a else 1 << 64, prot))
    return out


def flag_chars(raw: int, huge: bool) -> str:
    chars = ""
    for bit, char in _BITS:
        on = raw >> bit & 1 and (bit != 7 or huge)
        chars += char if on else "-"
    return chars


def pages_of(doc: dict[str, Any]) -> list[Page]:
    """Every page of a dump document's runs, with its exact flags (A/D from the bit masks)."""
    out = []
    for run in doc["runs"]:
        flags = int(run["flags"], 16) & ~0x60
        accessed, dirty = int(run["accessed"], 16), int(run["dirty"], 16)
        virt, phys, size = int(run["virt"], 16), int(run["phys"], 16), run["page_size"]
        for k in range(run["count"]):
            raw = flags | (accessed >> k & 1) << 5 | (dirty >> k & 1) << 6
            out.append((virt + k * size, phys + k * size, flag_chars(raw, size > 4096)))
    return out


def mem_of(doc: dict[str, Any]) -> list[tuple[int, int, str]]:
    """``info mem``'s ranges computed from a dump document: runs merged while contiguous in
    virtual address with the same user/writable rights."""
    out: list[list[Any]] = []
    for run in doc["runs"]:
        virt = int(run["virt"], 16)
        end = int(run["virt_end"], 16) + 1
        rights = run["rights"]
        prot = ("u" if rights["user"] else "-") + "r" + ("w" if rights["writable"] else "-")
        if out and out[-1][1] == virt and out[-1][2] == prot:
            out[-1][1] = end
        else:
            out.append([virt, end, prot])
    return [(a, b, p) for a, b, p in out]
