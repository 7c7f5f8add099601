"""The mapper error families, with the crate's variant names and payloads (rule M-06).

Each Rust error enum is an exception family (`MapToError`, `UnmapError`, `FlagUpdateError`,
`TranslateError`, `InvalidPageTable`); each variant is a class. A variant that several enums share
(``ParentEntryHugePage``, ``PageNotMapped``, ``InvalidFrameAddress``) is one class deriving from
every family that has it, so ``except UnmapError`` catches it when ``unmap`` raises it. Variants
carry the crate's payload: ``PageAlreadyMapped.frame`` (the frame the caller asked for, not the
one already there, issues #117/#461) and ``InvalidFrameAddress.addr``.
"""

from __future__ import annotations

from typing import Any

from kvmpage.addr import PhysAddr


class PagingError(Exception):
    """Base of every error a mapper returns (never of `kvmpage.panic.Panic`)."""

    def __repr__(self) -> str:
        return type(self).__name__


class MapToError(PagingError):
    """Why ``map_to`` / ``map_to_with_table_flags`` / ``identity_map`` failed."""


class UnmapError(PagingError):
    """Why ``unmap`` failed."""


class FlagUpdateError(PagingError):
    """Why ``update_flags`` / ``set_flags_p*_entry`` failed."""


class TranslateError(PagingError):
    """Why ``translate_page`` failed."""


class FrameAllocationFailed(MapToError):
    """The frame allocator had no frame left for a new page table."""

    #: Set by `map_range` (not in the crate): how many pages of the range it mapped before the
    #: allocator ran out. None when raised by `map_to`.
    pages_mapped: int | None = None

    def __str__(self) -> str:
        return "FrameAllocationFailed: the frame allocator returned no frame for a new page table"


class ParentEntryHugePage(MapToError, UnmapError, FlagUpdateError, TranslateError):
    """A parent entry maps a huge page, or (``unmap`` of a huge page, issue #610) the target
    entry is a table pointer instead of a huge mapping."""

    def __str__(self) -> str:
        return "ParentEntryHugePage: an entry on the way maps a huge page"


class PageAlreadyMapped(MapToError):
    """The target entry is not zero; ``.frame`` is the frame the caller asked to map."""

    def __init__(self, frame: Any) -> None:
        super().__init__(frame)
        self.frame = frame

    def __str__(self) -> str:
        return f"PageAlreadyMapped({self.frame!r}): the target entry is already in use"

    def __repr__(self) -> str:
        return f"PageAlreadyMapped({self.frame!r})"


class PageNotMapped(UnmapError, FlagUpdateError, TranslateError):
    """The page (or the entry to change) is not mapped."""

    def __str__(self) -> str:
        return "PageNotMapped: the page is not mapped"


class InvalidFrameAddress(UnmapError, TranslateError):
    """The entry's address is not aligned to the page size; ``.addr`` is the stored address."""

    def __init__(self, addr: PhysAddr) -> None:
        super().__init__(addr)
        self.addr = addr

    def __str__(self) -> str:
        return (
            f"InvalidFrameAddress({self.addr!r}): "
            "the entry's address is not aligned to the page size"
        )

    def __repr__(self) -> str:
        return f"InvalidFrameAddress({self.addr!r})"


class InvalidPageTable(PagingError):
    """Why a `RecursivePageTable` could not be created (rule R-01)."""


class NotRecursive(InvalidPageTable):
    """The table's virtual address is not of the recursive form (r, r, r, r, offset 0)."""

    def __str__(self) -> str:
        return "given page table address is not recursive"


class NotActive(InvalidPageTable):
    """Entry r of the table does not point at the active level-4 table (the CR3 frame)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        text = "given page table is not active on the CPU"
        return f"{text} ({self.detail})" if self.detail else text
