"""The crate's ``mapper`` module: the three mappers, their errors, flush tokens and results."""

from kvmpage.paging.mapper.base import TableMapper, Translate
from kvmpage.paging.mapper.errors import (
    FlagUpdateError,
    FrameAllocationFailed,
    InvalidFrameAddress,
    InvalidPageTable,
    MapToError,
    NotActive,
    NotRecursive,
    PageAlreadyMapped,
    PageNotMapped,
    PagingError,
    ParentEntryHugePage,
    TranslateError,
    UnmapError,
)
from kvmpage.paging.mapper.flush import (
    MapperFlush,
    MapperFlushAll,
    RecordingTlb,
    Tlb,
    UnusedFlushWarning,
)
from kvmpage.paging.mapper.mapped import MappedPageTable, PageTableFrameMapping, PhysicalFrames
from kvmpage.paging.mapper.offset import OffsetPageTable, PhysOffset
from kvmpage.paging.mapper.recursive import RecursivePageTable, recursive_table_address
from kvmpage.paging.mapper.translate import (
    InvalidFrameAddressResult,
    Mapped,
    MappedFrame,
    NotMapped,
    TranslateResult,
)

Mapper = TableMapper
CleanUp = TableMapper

__all__ = [
    "CleanUp",
    "FlagUpdateError",
    "FrameAllocationFailed",
    "InvalidFrameAddress",
    "InvalidFrameAddressResult",
    "InvalidPageTable",
    "MapToError",
    "Mapped",
    "MappedFrame",
    "MappedPageTable",
    "Mapper",
    "MapperFlush",
    "MapperFlushAll",
    "NotActive",
    "NotMapped",
    "NotRecursive",
    "OffsetPageTable",
    "PageAlreadyMapped",
    "PageNotMapped",
    "PageTableFrameMapping",
    "PagingError",
    "ParentEntryHugePage",
    "PhysOffset",
    "PhysicalFrames",
    "RecordingTlb",
    "RecursivePageTable",
    "TableMapper",
    "Tlb",
    "Translate",
    "TranslateError",
    "TranslateResult",
    "UnmapError",
    "UnusedFlushWarning",
    "recursive_table_address",
]
