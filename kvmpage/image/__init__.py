"""Memory images: real page tables from crash dumps and snapshots, as physical memory.

    from kvmpage.image import open_image

    with open_image("guest.elf") as image:          # QEMU dump-guest-memory, vmcore, LiME, raw
        ctx = image.context()                        # CPU 0's CR3, CR0, CR4 (EFER assumed)
        leaves = image.leaves(ctx)                   # every mapping, as the CPU walks it
        print(image.walk(0xffff888000000000, ctx))   # one address
        tables = image.tables(ctx)                   # the crate's Translate over them

Formats end at "segments + CPU state" (`kvmpage.image.formats`, `kvmpage.image.elf`,
`kvmpage.image.notes`): everything above sees a `kvmpage.memory.PhysicalMemory` and a
`PagingContext`, exactly as for a layout kvmpage built itself.
"""

from kvmpage.image.context import PagingContext
from kvmpage.image.errors import ImageError
from kvmpage.image.image import Image, SegmentInfo, open_image
from kvmpage.image.notes import CpuRegisters
from kvmpage.image.tables import ImageTables, ReadOnlyImageError

__all__ = [
    "CpuRegisters",
    "Image",
    "ImageError",
    "ImageTables",
    "PagingContext",
    "ReadOnlyImageError",
    "SegmentInfo",
    "open_image",
]
