"""TLB flush tokens: `MapperFlush` and `MapperFlushAll` (rule M-07, M-08).

Mappers never flush by themselves; every change returns a token naming what must be flushed. The
caller must ``flush()`` it (``invlpg`` of that page / a CR3 reload) or ``ignore()`` it. A token
dropped without either raises an `UnusedFlushWarning`, the Python form of the crate's
``#[must_use]``. Where the flush goes is the mapper's `Tlb`: a `RecordingTlb` for pure software
use, the guest agent for a machine-backed mapper.
"""

from __future__ import annotations

import warnings
from typing import Any, Generic, Protocol, TypeVar

from kvmpage.addr import AnyVirtAddr, VirtAddr

S = TypeVar("S")


class UnusedFlushWarning(UserWarning):
    """A flush token was dropped without ``flush()`` or ``ignore()``."""


class Tlb(Protocol):
    """Where flushes go. A 5-level mapper's tokens pass a `VirtAddr57` to `invlpg` (the page's
    own address type); a `Tlb` for such a mapper takes both (`RecordingTlb` does)."""

    def invlpg(self, addr: VirtAddr) -> None:
        """Invalidate the translation of the page containing ``addr``."""

    def flush_all(self) -> None:
        """Reload CR3 (all non-global translations)."""


class RecordingTlb:
    """A software TLB stand-in: records every flush, in order, for inspection and tests."""

    def __init__(self) -> None:
        #: ``("invlpg", VirtAddr)`` (a `VirtAddr57` from a 5-level mapper) and
        #: ``("flush_all", None)`` records.
        self.log: list[tuple[str, AnyVirtAddr | None]] = []

    def invlpg(self, addr: AnyVirtAddr) -> None:
        self.log.append(("invlpg", addr))

    def flush_all(self) -> None:
        self.log.append(("flush_all", None))


class _Token:
    """What both tokens share: the `Tlb` the flush goes to, and whether it was used.

    A token is made by every successful mapping operation, so its life is kept short: the
    constructors and `ignore` set and test the slots directly (one call each, no ``super()``).
    """

    __slots__ = ("_tlb", "_used")
    _tlb: Tlb
    _used: bool

    def _consume(self) -> None:
        if self._used:
            raise RuntimeError(f"{type(self).__name__} was already flushed or ignored")
        self._used = True

    def ignore(self) -> None:
        """Drop the token on purpose: the caller takes care of the TLB."""
        if self._used:
            raise RuntimeError(f"{type(self).__name__} was already flushed or ignored")
        self._used = True

    def __del__(self) -> None:
        if not self._used:
            warnings.warn(
                f"{self!r} dropped without flush() or ignore(): the TLB may keep a stale entry",
                UnusedFlushWarning,
                stacklevel=2,
            )


class MapperFlush(_Token, Generic[S]):
    """The page whose translation changed; ``flush()`` executes ``invlpg`` for it."""

    __slots__ = ("_page",)

    def __init__(self, page: Any, tlb: Tlb | None = None) -> None:
        self._used = False
        self._tlb = tlb if tlb is not None else RecordingTlb()
        self._page = page

    def page(self) -> Any:
        """The page to flush (PR #525)."""
        return self._page

    def flush(self) -> None:
        """``invlpg`` of the page's start address."""
        self._consume()
        self._tlb.invlpg(self._page.start_address())

    def __repr__(self) -> str:
        return f"MapperFlush({self._page!r})"


class MapperFlushAll(_Token):
    """A change to an upper-level entry; ``flush_all()`` reloads CR3."""

    __slots__ = ()

    def __init__(self, tlb: Tlb | None = None) -> None:
        self._used = False
        self._tlb = tlb if tlb is not None else RecordingTlb()

    def flush_all(self) -> None:
        """Reload CR3."""
        self._consume()
        self._tlb.flush_all()

    def __repr__(self) -> str:
        return "MapperFlushAll"
