"""The architecture's facts about paging entries, in one place.

Entry bits and the address field, the CPU state and CPU features that change what an entry
means (CR0.WP, CR4.SMEP/SMAP/LA57, EFER.NXE, RFLAGS.AC; MAXPHYADDR, 1 GiB pages), which bits of
an entry are reserved at each level, and canonical addresses for 4- and 5-level paging (Intel
SDM vol. 3A ch. 4.5, AMD APM vol. 2 ch. 5.3). Everything that walks tables (`kvmpage.paging.walk`,
`kvmpage.paging.leaves`, `kvmpage.paging.access`) takes its rules from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmpage.addr import canonicalize, is_canonical
from kvmpage.x86 import ADDRESS_MASK, NX, PS, U64_MASK, A, D, G, P, U, W

__all__ = [
    "ADDRESS_MASK", "CpuState", "Features", "LEVEL_NAMES", "PAGE_SIZE_OF_LEVEL", "U64_MASK",
    "A", "D", "G", "NX", "P", "PS", "U", "W",
    "canonicalize", "is_canonical", "leaf_frame", "reserved_mask", "size_text",
]  # fmt: skip

#: Conventional names of the tables by level (the table that holds level-``n`` entries).
LEVEL_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
#: Bytes mapped by one leaf entry at levels 1, 2, 3.
PAGE_SIZE_OF_LEVEL = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}


@dataclass(frozen=True, slots=True)
class CpuState:
    """The control-register bits that change the outcome of an access."""

    wp: bool = True  #: CR0.WP: supervisor writes honour read-only pages
    smep: bool = False  #: CR4.SMEP
    smap: bool = False  #: CR4.SMAP
    nxe: bool = True  #: EFER.NXE: bit 63 means no-execute (else it is reserved)
    ac: bool = False  #: RFLAGS.AC: lifts SMAP for explicit supervisor data accesses
    la57: bool = False  #: CR4.LA57: 5-level paging (57-bit virtual addresses)

    @property
    def levels(self) -> int:
        """Paging levels: 5 with CR4.LA57, else 4."""
        return 5 if self.la57 else 4


@dataclass(frozen=True, slots=True)
class Features:
    """What the CPU supports, as far as the walk is concerned."""

    maxphyaddr: int = 52  #: physical address width; address bits at or above it are reserved
    gbpages: bool = True  #: 1 GiB pages (PS in a PDPTE)


def reserved_mask(level: int, raw: int, cpu: CpuState, features: Features) -> int:
    """The bits of entry ``raw`` at ``level`` that are reserved: a present entry with any of
    them set makes the walk fault (#PF with RSVD) at that level.

    Address bits at or above MAXPHYADDR; NX when EFER.NXE is clear; PS at levels 4 and 5; PS at
    level 3 without 1 GiB page support; bits 13..29 of a 1 GiB leaf and 13..20 of a 2 MiB leaf
    (bit 12 is the leaf's PAT bit).
    """
    mask = ADDRESS_MASK & ~((1 << features.maxphyaddr) - 1) if features.maxphyaddr < 52 else 0
    if not cpu.nxe:
        mask |= NX
    if level >= 4:
        mask |= PS
    elif raw & PS:
        if level == 3:
            mask |= PS if not features.gbpages else ((1 << 30) - 1) & ~0x1FFF
        elif level == 2:
            mask |= ((1 << 21) - 1) & ~0x1FFF
    return mask


def leaf_frame(raw: int, level: int) -> int:
    """The physical start of the page a leaf entry at ``level`` maps (PAT bit 12 of a huge
    leaf and its reserved bits are not part of the address)."""
    return raw & ADDRESS_MASK & ~(PAGE_SIZE_OF_LEVEL[level] - 1)


def size_text(n: int) -> str:
    """``4 KiB``, ``2 MiB``, ``1 GiB``: a page size (or any power-of-two size) for people."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"
