"""Results of `Translate.translate`: `TranslateResult` and `MappedFrame` (rules M-04, M-05)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvmpage.addr import PhysAddr
from kvmpage.paging.page import PageSize
from kvmpage.paging.table import PageTableFlags


@dataclass(frozen=True, slots=True)
class MappedFrame:
    """The frame a virtual address reached, of whichever size the walk found (4 KiB/2 MiB/1 GiB)."""

    frame: Any  # PhysFrame[Size4KiB] | PhysFrame[Size2MiB] | PhysFrame[Size1GiB]

    @property
    def size_type(self) -> type[PageSize]:
        """``Size4KiB``, ``Size2MiB`` or ``Size1GiB``."""
        return self.frame.SIZE_TYPE  # type: ignore[no-any-return]

    def start_address(self) -> PhysAddr:
        """Physical start of the frame."""
        return self.frame.start_address()  # type: ignore[no-any-return]

    def size(self) -> int:
        """Bytes in the frame."""
        return self.frame.SIZE  # type: ignore[no-any-return]


class TranslateResult:
    """What a walk found for one address: `Mapped`, `NotMapped` or `InvalidFrameAddress`.

    Use ``isinstance(r, TranslateResult.Mapped)`` or ``match r: case TranslateResult.Mapped(...)``.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Mapped(TranslateResult):
    """Mapped: the frame, the offset inside it, and the **leaf** entry's flags only (issue #534)."""

    frame: MappedFrame
    offset: int
    flags: PageTableFlags


@dataclass(frozen=True, slots=True)
class NotMapped(TranslateResult):
    """No valid mapping for the address."""


@dataclass(frozen=True, slots=True)
class InvalidFrameAddressResult(TranslateResult):
    """The leaf entry holds an address that is not a valid frame start."""

    addr: PhysAddr


TranslateResult.Mapped = Mapped  # type: ignore[attr-defined]
TranslateResult.NotMapped = NotMapped  # type: ignore[attr-defined]
TranslateResult.InvalidFrameAddress = InvalidFrameAddressResult  # type: ignore[attr-defined]
