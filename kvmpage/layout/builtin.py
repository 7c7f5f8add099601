"""The built-in layout: a small address space that shows every kind of mapping.

User text (read, execute), user data with a hole in it (read, write, no execute), user read-only
data, 2 MiB user pages, kernel text / data / read-only data (global), a window onto all of
physical memory through 2 MiB pages (what `OffsetPageTable` needs), a 1 GiB page, and a
recursive slot. Every frame lies inside physical memory except the 1 GiB page's, which cannot
fit in a small guest.
"""

from __future__ import annotations

from dataclasses import replace

from kvmpage.layout.spec import LayoutSpec, MappingSpec
from kvmpage.paging import PageTableFlags, Size1GiB, Size2MiB, Size4KiB

F = PageTableFlags
P, W, U, G, NX = F.PRESENT, F.WRITABLE, F.USER_ACCESSIBLE, F.GLOBAL, F.NO_EXECUTE

MEMORY_SIZE = 64 << 20
PHYS_OFFSET = 0xFFFF_8880_0000_0000
RECURSIVE_INDEX = 510


def builtin_layout(*, gbpages: bool = True) -> LayoutSpec:
    """The showcase layout, for an `OffsetPageTable` over 64 MiB of physical memory.

    ``gbpages=False`` leaves out the 1 GiB page, for hosts that cannot verify one.
    """
    m = MappingSpec
    spec = LayoutSpec(
        name="builtin",
        kind="offset",
        memory_size=MEMORY_SIZE,
        phys_offset=PHYS_OFFSET,
        recursive_index=RECURSIVE_INDEX,
        mappings=(
            m("user-text", 0x40_0000, Size4KiB, 4, P | U),
            m("user-data", 0x60_0000, Size4KiB, 3, P | W | U | NX),
            # one page left unmapped here: a hole inside the data segment
            m("user-data-2", 0x60_4000, Size4KiB, 2, P | W | U | NX),
            m("user-rodata", 0x70_0000, Size4KiB, 2, P | U | NX),
            m("user-heap-2m", 0x4000_0000, Size2MiB, 2, P | W | U | NX),
            m("giant-1g", 0x80_0000_0000, Size1GiB, 1, P | W | NX, phys=0x4000_0000),
            m("kernel-text", 0xFFFF_C000_0000_0000, Size4KiB, 4, P | G),
            m("kernel-data", 0xFFFF_C000_0010_0000, Size4KiB, 4, P | W | G | NX),
            m("kernel-rodata", 0xFFFF_C000_0020_0000, Size4KiB, 2, P | G | NX),
            m("phys-window", PHYS_OFFSET, Size2MiB, MEMORY_SIZE >> 21, P | W | G | NX, phys=0),
        ),
    )
    if gbpages:
        return spec
    return replace(spec, mappings=tuple(x for x in spec.mappings if x.size is not Size1GiB))
