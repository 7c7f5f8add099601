"""Named regions of an address space: Linux's ptdump address markers, placed for one image.

Linux prints ``---[ User Space ]---``, ``---[ Low Kernel Mapping ]---``... as its ptdump walk
crosses each marker. The fixed ones (the kernel half, the LDT remap, the CPU entry area,
espfix, EFI, the kernel image, modules) depend only on the paging depth; three move with KASLR
(the direct map, vmalloc, vmemmap) and are not in VMCOREINFO. `linux_regions` places the fixed
markers, the kernel image size from VMCOREINFO, and the direct map where the tables put it (the
lowest kernel-half address that maps physical 0 with the direct map's rights); the markers it
cannot place are left out and named in `Regions.unplaced`, never guessed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmpage.layout.dump import Run

#: ptdump's default start addresses without KASLR (4-level, then 5-level).
_DEFAULT_BASES = {
    4: {"page_offset": 0xFFFF_8880_0000_0000, "vmalloc": 0xFFFF_C900_0000_0000,
        "vmemmap": 0xFFFF_EA00_0000_0000},
    5: {"page_offset": 0xFF11_0000_0000_0000, "vmalloc": 0xFFA0_0000_0000_0000,
        "vmemmap": 0xFFD4_0000_0000_0000},
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Region:
    """A marker: the region ``name`` starts at ``start`` (and ends where the next one starts).
    ``max_lines``: ptdump prints at most this many lines of it (0: no limit)."""

    start: int
    name: str
    max_lines: int = 0


@dataclass
class Regions:
    """Markers in ascending order, and what could not be placed."""

    markers: list[Region]
    unplaced: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.markers.sort(key=lambda r: r.start)
        self._starts = [r.start for r in self.markers]

    def of(self, va: int) -> Region | None:
        """The region ``va`` lies in."""
        i = bisect.bisect_right(self._starts, va) - 1
        return self.markers[i] if i >= 0 else None

    def name_of(self, va: int) -> str:
        region = self.of(va)
        return region.name if region is not None else ""


def user_kernel_regions() -> Regions:
    """The two halves only (any kernel)."""
    return Regions([Region(0, "User Space"), Region(1 << 63, "Kernel Space")])


def linux_regions(vmcoreinfo: dict[str, str], levels: int, runs: Sequence[Run] = ()) -> Regions:
    """Linux x86-64's ptdump markers for a kernel that published ``vmcoreinfo``, placed with
    the help of its ``runs`` (see the module docstring)."""
    l5 = levels == 5
    markers = [
        Region(0, "User Space"),
        Region(1 << 63, "Kernel Space"),
        Region(0xFF10_0000_0000_0000 if l5 else 0xFFFF_8800_0000_0000, "LDT remap"),
        Region(0xFFFF_FE00_0000_0000, "CPU entry Area"),
        Region(0xFFFF_FF00_0000_0000, "ESPfix Area", 16),
        Region(0xFFFF_FFEF_0000_0000, "EFI Runtime Services"),
        Region(0xFFFF_FFFF_8000_0000, "High Kernel Mapping"),
    ]
    unplaced: list[str] = []
    try:
        image_size = int(vmcoreinfo.get("NUMBER(KERNEL_IMAGE_SIZE)", "0x40000000"), 0)
    except ValueError:
        image_size = 1 << 30
    markers.append(Region(0xFFFF_FFFF_8000_0000 + image_size, "Modules"))
    markers.append(Region(0xFFFF_FFFF_FF00_0000, "End Modules"))
    kaslr = vmcoreinfo.get("KERNELOFFSET", "0").strip() not in ("0", "")
    defaults = _DEFAULT_BASES[levels]
    if not kaslr and vmcoreinfo:
        markers += [
            Region(defaults["page_offset"], "Low Kernel Mapping"),
            Region(defaults["vmalloc"], "vmalloc() Area"),
            Region(defaults["vmemmap"], "Vmemmap"),
        ]
        return Regions(markers, unplaced)
    direct = _direct_map(runs)
    if direct is not None:
        markers.append(Region(direct, "Low Kernel Mapping"))
    else:
        unplaced.append("Low Kernel Mapping")
    unplaced += ["vmalloc() Area", "Vmemmap"]
    return Regions(markers, unplaced)


def _direct_map(runs: Sequence[Run]) -> int | None:
    """The lowest kernel-half address that maps physical 0 read-write, no-execute, kernel-only
    and 1 GiB aligned: where Linux's direct map (``page_offset_base``) starts."""
    for r in runs:
        if r.virt < 1 << 63 or r.phys != 0:
            continue
        if r.virt % (1 << 30) == 0 and r.rights.writable and not r.rights.user:
            return r.virt
    return None
