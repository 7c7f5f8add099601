"""The software MMU: a port of the paging module of the Rust crate ``x86_64`` (0.15.4).

Everything here is pure Python and works on any OS; nothing imports the KVM layers.
"""

from kvmpage.index import ENTRY_COUNT, PageOffset, PageTableIndex, PageTableLevel
from kvmpage.paging.arch import ADDRESS_MASK
from kvmpage.paging.frame_alloc import (
    BumpFrameAllocator,
    FrameAllocator,
    FrameDeallocationError,
    FrameDeallocator,
    PoolFrameAllocator,
)
from kvmpage.paging.mapper import *  # noqa: F403
from kvmpage.paging.mapper import __all__ as _mapper_all
from kvmpage.paging.page import (
    PAGE_SIZES,
    AddressNotAligned,
    Page,
    PageRange,
    PageRangeInclusive,
    PageSize,
    PhysFrame,
    PhysFrameRange,
    PhysFrameRangeInclusive,
    Size1GiB,
    Size2MiB,
    Size4KiB,
)
from kvmpage.paging.page57 import Page57
from kvmpage.paging.table import (
    FrameError,
    FrameNotPresent,
    HugeFrame,
    PageTable,
    PageTableEntry,
    PageTableFlags,
)
from kvmpage.paging.walk import SoftPageFault

__all__ = [
    "ADDRESS_MASK",
    "ENTRY_COUNT",
    "PAGE_SIZES",
    "AddressNotAligned",
    "BumpFrameAllocator",
    "FrameAllocator",
    "FrameDeallocationError",
    "FrameDeallocator",
    "FrameError",
    "FrameNotPresent",
    "HugeFrame",
    "Page",
    "Page57",
    "PageOffset",
    "PageRange",
    "PageRangeInclusive",
    "PageSize",
    "PageTable",
    "PageTableEntry",
    "PageTableFlags",
    "PageTableIndex",
    "PageTableLevel",
    "PhysFrame",
    "PhysFrameRange",
    "PhysFrameRangeInclusive",
    "PoolFrameAllocator",
    "Size1GiB",
    "Size2MiB",
    "Size4KiB",
    "SoftPageFault",
    *_mapper_all,
]
