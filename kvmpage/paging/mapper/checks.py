"""Argument checks of the mappers' public operations, made before anything is changed.

Rust's types rule out most bad arguments at compile time; here each public operation checks
them first, with a `TypeError` (wrong kind of value) or `ValueError` (right kind, out of range),
so that a bad call never leaves half of its work behind: ``map_to(page, None, ...)`` used to
create the page's tables and then fail on the missing frame, and a ``None`` allocator failed
deep inside, after parents had their flags changed.

Flags are an ``int`` or `PageTableFlags` (not a ``bool``) within u64 and without bits in the
address field (12..51): the crate ORs such bits into the frame address and so maps another
frame than the one asked for (``flags = 1 << 40``); kvmpage refuses them (a deliberate
difference, docs/divergences.md). The raw entry API (`PageTableEntry.set_addr` and friends)
keeps the crate's behaviour (T-07).

These run on every ``map_to``, so they are cheap: an allocator's type is remembered once it
was seen to have a callable ``allocate_frame``.
"""

from __future__ import annotations

import operator
from typing import Any

from kvmpage.memory import PhysMemory
from kvmpage.paging.page import Page, PageRange, PageRangeInclusive, PhysFrame
from kvmpage.paging.table import ADDRESS_MASK, PageTable, PageTableFlags

#: Bits no flags argument of a mapper may have: the address field, and anything outside u64
#: (a negative int has all of these).
BAD_FLAG_BITS = ADDRESS_MASK | (-1 << 64)
#: Allocator / deallocator types whose class defines the method (checked once each).
ALLOCATORS: set[type] = set()
_DEALLOCATORS: set[type] = set()


def flags_arg(flags: Any, name: str = "flags") -> int:
    """``flags`` as an int: `PageTableFlags` or int, in u64, no address-field bits."""
    kind = type(flags)
    if kind is PageTableFlags:
        flags = flags._value_  # (int() of an IntFlag costs twice as much)
    elif kind is not int:
        if isinstance(flags, bool):
            raise TypeError(f"{name} must be PageTableFlags or an int, got {flags!r}")
        try:
            flags = operator.index(flags)
        except TypeError:
            raise TypeError(
                f"{name} must be PageTableFlags or an int, got {type(flags).__name__}"
            ) from None
    value: int = flags
    if value & BAD_FLAG_BITS:
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{name} {value:#x} do not fit in 64 bits")
        raise ValueError(
            f"{name} {value:#x} have bits in the address field (12..51): they would be OR'ed "
            f"into the frame address and map another frame (bits {value & ADDRESS_MASK:#x})"
        )
    return value


def allocator_arg(allocator: Any, name: str = "frame_allocator") -> None:
    """``allocator`` has a callable ``allocate_frame`` (a `FrameAllocator`)."""
    if type(allocator) in ALLOCATORS:
        return
    _method_arg(allocator, "allocate_frame", name, ALLOCATORS)


def deallocator_arg(deallocator: Any, name: str = "frame_deallocator") -> None:
    """``deallocator`` has a callable ``deallocate_frame`` (a `FrameDeallocator`)."""
    if type(deallocator) in _DEALLOCATORS:
        return
    _method_arg(deallocator, "deallocate_frame", name, _DEALLOCATORS)


def _method_arg(value: Any, method: str, name: str, known: set[type]) -> None:
    if not callable(getattr(value, method, None)):
        raise TypeError(f"{name} must have the method {method}(), got {type(value).__name__}")
    if callable(getattr(type(value), method, None)):  # defined by the class: true of them all
        known.add(type(value))


def page_arg(page: Any) -> None:
    """``page`` is a `Page` of some size."""
    if not isinstance(page, Page):
        raise TypeError(f"expected a Page, got {type(page).__name__}")


def frame_arg(page: Any, frame: Any) -> None:
    """``frame`` is a `PhysFrame` of ``page``'s size (``page`` already checked)."""
    if not isinstance(frame, PhysFrame):
        raise TypeError(f"expected a PhysFrame, got {type(frame).__name__}")
    if frame.SIZE_TYPE is not page.SIZE_TYPE:
        raise TypeError(
            f"cannot map a {page.SIZE_TYPE.DEBUG_STR} page to a {frame.SIZE_TYPE.DEBUG_STR} frame"
        )


def range_arg(pages: Any) -> None:
    """``pages`` is a `PageRange` or `PageRangeInclusive`."""
    if not isinstance(pages, PageRange | PageRangeInclusive):
        raise TypeError(f"expected a PageRange or PageRangeInclusive, got {type(pages).__name__}")


def index_arg(value: Any, name: str) -> int:
    """A table index: an int (not a bool) or a `PageTableIndex`, in 0..511."""
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in 0..511, got {type(value).__name__}") from None
    if not 0 <= index < 512:
        raise ValueError(f"{name} must be a table index in 0..511, got {index}")
    return index


def cr3_arg(cr3: Any) -> None:
    if type(cr3) is not PhysFrame:
        raise TypeError(f"cr3 must be a 4 KiB PhysFrame, got {cr3!r}")


def memory_arg(memory: Any) -> None:
    """``memory`` is a `PhysMemory`."""
    if not isinstance(memory, PhysMemory):
        raise TypeError(f"memory must be a PhysMemory, got {type(memory).__name__}")


def tlb_arg(tlb: Any) -> None:
    """``tlb`` is None (a `RecordingTlb`) or has ``invlpg`` and ``flush_all`` (a `Tlb`)."""
    if tlb is not None and not (
        callable(getattr(tlb, "invlpg", None)) and callable(getattr(tlb, "flush_all", None))
    ):
        raise TypeError(f"tlb must have invlpg() and flush_all() methods, got {type(tlb).__name__}")


def table_arg(table: Any, name: str = "level_4_table") -> None:
    """``table`` is a `PageTable`."""
    if not isinstance(table, PageTable):
        raise TypeError(f"{name} must be a PageTable, got {type(table).__name__}")


__all__ = [
    "BAD_FLAG_BITS",
    "allocator_arg",
    "cr3_arg",
    "deallocator_arg",
    "flags_arg",
    "frame_arg",
    "index_arg",
    "memory_arg",
    "page_arg",
    "range_arg",
    "table_arg",
    "tlb_arg",
]
