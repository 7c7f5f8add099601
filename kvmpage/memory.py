"""Physical memory: the one interface through which kvmpage reads and writes page tables.

Two implementations share the `PhysicalMemory` interface, so everything above it (the walk,
the leaf listing, the audit, the verifier) never asks where the bytes come from:

- `PhysMemory`: a flat, zero-initialised address space ``[0, size)`` backed by one writable
  buffer: a ``bytearray`` for pure software use, or the ``mmap`` that is registered with KVM as
  guest RAM, so the software mapper writes straight into the guest. It may declare *holes*
  (``present=``): ranges inside ``[0, size)`` that are not memory (guest-physical addresses
  with no RAM behind them).
- `kvmpage.segmented.SegmentedMemory`: sparse segments, each a view of its own buffer (the
  read-only or private ``mmap`` of a memory image file), Volatility-style: an address no
  segment covers is *absent*.

Absent is not zero: every access to an absent address raises `AbsentMemoryError`, so a walk that
reaches one stops with that reason instead of reading zeros. Every access is bounds-checked and
nothing is ever written out of range. Table entries are little-endian ``u64`` values at 8-byte
aligned addresses, as an x86-64 CPU reads them.

The word-array access is public and is what fast code uses: `PhysicalMemory.frame_words` gives
the ``u64`` view that holds a 4 KiB frame and the index of its first word; a flat memory also
has `PhysMemory.words`, the whole memory as one ``u64`` array. Page-table views over any of
them are `kvmpage.paging.table.PageTable` (this module knows nothing of tables).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

FRAME = 4096
_TABLE_WORDS = FRAME // 8


class PhysMemoryError(Exception):
    """A physical access fell outside the memory, was misaligned, or the memory is closed."""


class AbsentMemoryError(PhysMemoryError):
    """A physical access reached an address that is not in this memory (``addr``): a range no
    segment of an image covers, or a hole with no RAM behind it. Never read as zeros."""

    def __init__(self, message: str, addr: int) -> None:
        super().__init__(message)
        self.addr = addr


class ReadOnlyMemoryError(PhysMemoryError):
    """A write to memory that is read-only (a memory image opened for reading)."""


class Ranges:
    """Sorted, disjoint, half-open ``[start, end)`` ranges with O(log n) lookups."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted((int(s), int(e)) for s, e in ranges):
            if start >= end:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def covers(self, addr: int, length: int = 1) -> bool:
        """Whether every byte of ``[addr, addr + length)`` lies in one range."""
        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and addr + length <= self._ends[i]

    def first_gap(self, addr: int, length: int) -> int | None:
        """The first address of ``[addr, addr + length)`` outside every range, or None."""
        end = addr + length
        while addr < end:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0 or addr >= self._ends[i]:
                return addr
            addr = self._ends[i]
        return None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def total(self) -> int:
        """Bytes covered."""
        return sum(e - s for s, e in self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s:#x}-{e:#x}" for s, e in self)
        return f"Ranges({inner})"


class PhysicalMemory:
    """The interface every physical memory offers (see the module docstring).

    Subclasses implement `_locate` (the byte and word views holding an address) and declare
    what is present; everything else is shared. ``size`` is the end of the address space the
    memory describes (one past its last present byte).
    """

    size: int
    #: Whether writes are refused (`ReadOnlyMemoryError`).
    readonly: bool = False
    #: The whole memory as one ``u64`` view, word ``i`` at physical ``8 * i``, when it is one
    #: buffer from address 0 with every frame of ``[0, size)`` present and ``size`` a whole
    #: number of frames; else None (and None once closed). Read it, never set it.
    #: For the walk's fast paths (`kvmpage.paging.walk`): with it, a table at a 4 KiB aligned
    #: address ``t`` is in memory exactly when ``flat_words[(t >> 3) + 511]`` does not raise
    #: `IndexError`, so a walk needs no other check. Unchecked and live, like
    #: `PhysMemory.words`. An attribute, not a method: the walk reads it on every call.
    flat_words: memoryview | None = None

    # -- what is present ----------------------------------------------------------------------

    def present(self) -> Ranges:
        """The physical ranges that hold memory."""
        raise NotImplementedError

    def contains(self, addr: int, length: int = 1) -> bool:
        """Whether every byte of ``[addr, addr + length)`` is present."""
        raise NotImplementedError

    def check(self, addr: int, length: int = 1) -> None:
        """Raise `PhysMemoryError` (`AbsentMemoryError` for a gap) unless every byte of
        ``[addr, addr + length)`` is present."""
        addr = int(addr)
        if self.contains(addr, length):
            return
        if addr < 0 or length < 0 or addr + length > self.size:
            raise PhysMemoryError(
                f"physical range {addr:#x}+{length:#x} is outside memory [0, {self.size:#x})"
            )
        gap = self.present().first_gap(addr, length)
        at = addr if gap is None else gap
        raise AbsentMemoryError(f"physical address {at:#x} is {self.absent_word}", at)

    #: How an absent address is described in messages ("not in the image", "not RAM").
    absent_word = "not present in this memory"

    # -- words ---------------------------------------------------------------------------------

    def frame_words(self, addr: int) -> tuple[memoryview, int]:
        """The ``u64`` view holding the 4 KiB frame at ``addr`` and the index of the frame's
        first word in it: word ``i`` of the frame is ``view[index + i]``.

        ``addr`` must be 4 KiB aligned and the whole frame present (else `PhysMemoryError` /
        `AbsentMemoryError`). The view is live: writes go to the memory (unless read-only).
        """
        raise NotImplementedError

    def table_words(self, addr: int) -> list[int]:
        """The 512 ``u64`` words of the 4 KiB frame at ``addr``, copied."""
        q, base = self.frame_words(addr)
        return q[base : base + _TABLE_WORDS].tolist()

    # -- access (shared through `_span`) -------------------------------------------------------

    def _span(self, addr: int, length: int) -> memoryview:
        """A byte view of ``[addr, addr + length)``, which must be present and contiguous."""
        raise NotImplementedError

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyMemoryError(
                f"{self!r} is read-only (open a memory image with writable=True for a private "
                "copy that can be changed)"
            )

    def read_u64(self, addr: int) -> int:
        """Read the little-endian u64 at the 8-byte aligned physical address ``addr``."""
        addr = int(addr)
        if addr & 7:
            raise PhysMemoryError(f"u64 access at {addr:#x} is not 8-byte aligned")
        q, base = self._word_view(addr)
        return int(q[base])

    def write_u64(self, addr: int, value: int) -> None:
        """Write ``value`` (0 <= value < 2**64) as a little-endian u64 at ``addr``."""
        addr = int(addr)
        if not 0 <= value < 1 << 64:
            raise PhysMemoryError(f"{value:#x} does not fit in 64 bits")
        if addr & 7:
            raise PhysMemoryError(f"u64 access at {addr:#x} is not 8-byte aligned")
        self._writable()
        q, base = self._word_view(addr)
        q[base] = value

    def _word_view(self, addr: int) -> tuple[memoryview, int]:
        """The ``u64`` view holding the present, 8-byte aligned word at ``addr``, and its index."""
        raise NotImplementedError

    def read(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``addr``."""
        return bytes(self._span(int(addr), length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``addr``; nothing is written if any byte would be out of range."""
        src = memoryview(data).cast("B")
        self._writable()
        self._span(int(addr), len(src))[:] = src

    def zero(self, addr: int, length: int) -> None:
        """Set ``length`` bytes starting at ``addr`` to zero."""
        self._writable()
        self._span(int(addr), length)[:] = bytes(length)

    def view(self, addr: int, length: int) -> memoryview:
        """A live byte view of ``[addr, addr + length)`` (writes go through, unless read-only).

        Release it (``view.release()``) before closing an mmap-backed memory: while it lives,
        the mmap refuses to close.
        """
        return self._span(int(addr), length)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the views on the buffers (idempotent); later accesses raise."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether `close` has been called."""
        raise NotImplementedError

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed_error(e: ValueError) -> PhysMemoryError:
    return PhysMemoryError(f"physical memory is closed: {e}")


class PhysMemory(PhysicalMemory):
    """A physical address space of ``size`` bytes starting at physical address 0.

    ``buffer`` (optional) is any writable object supporting the buffer protocol whose length is
    ``size`` rounded to whole 4 KiB frames; without it a zeroed ``bytearray`` is allocated. The
    memory keeps a ``memoryview`` on the buffer; call `close` (or use ``with``) before closing an
    mmap buffer, or the mmap will refuse to close.

    ``present`` (optional): the ranges of ``[0, size)`` that are memory; the rest are holes
    (`AbsentMemoryError`). By default everything is present.
    """

    __slots__ = (
        "_buf", "_bytes", "_holes", "_present", "_q", "absent_word", "flat_words", "size",
    )  # fmt: skip

    def __init__(
        self,
        size: int,
        *,
        buffer: Any = None,
        present: Iterable[tuple[int, int]] | None = None,
        absent_word: str = "not RAM (a hole in this memory)",
    ) -> None:
        if size <= 0 or size % FRAME:
            raise PhysMemoryError(
                f"memory size must be a positive multiple of 4 KiB, got {size:#x}"
            )
        if buffer is None:
            buffer = bytearray(size)
        view = memoryview(buffer)
        if view.readonly:
            view.release()
            raise PhysMemoryError("the buffer backing physical memory must be writable")
        if view.nbytes != size:
            nbytes = view.nbytes
            view.release()
            raise PhysMemoryError(f"buffer holds {nbytes:#x} bytes, memory size is {size:#x}")
        self._buf = buffer
        #: Byte view of the whole memory.
        self._bytes: memoryview = view.cast("B")
        #: The same memory as little-endian u64 words; word ``i`` is physical address ``8 * i``.
        self._q: memoryview = view.cast("B").cast("Q")
        view.release()
        #: Size in bytes.
        self.size = size
        ranges = Ranges([(0, size)] if present is None else present)
        for start, end in ranges:
            if start < 0 or end > size or start % FRAME or end % FRAME:
                raise PhysMemoryError(
                    f"present range {start:#x}-{end:#x} must be 4 KiB aligned inside [0, {size:#x})"
                )
        self._present = ranges
        #: Whether some of ``[0, size)`` is not memory.
        self._holes = ranges.total != size
        self.absent_word = absent_word
        self.flat_words = None if self._holes else self._q

    @property
    def words(self) -> memoryview:
        """The whole memory as little-endian ``u64`` words: word ``i`` is physical address
        ``8 * i``. Live and unchecked: the caller bounds its indices (and, when the memory has
        holes, asks `contains` first: a hole reads as zeros here)."""
        return self._q

    @property
    def has_holes(self) -> bool:
        """Whether part of ``[0, size)`` is not memory."""
        return self._holes

    def present(self) -> Ranges:
        return self._present

    def contains(self, addr: int, length: int = 1) -> bool:
        if addr < 0 or length < 0 or addr + length > self.size:
            return False
        return not self._holes or self._present.covers(addr, max(length, 1))

    def frame_words(self, addr: int) -> tuple[memoryview, int]:
        addr = int(addr)
        if addr & (FRAME - 1):
            raise PhysMemoryError(f"a frame address must be 4 KiB aligned, got {addr:#x}")
        if not (0 <= addr <= self.size - FRAME) or self._holes:
            self.check(addr, FRAME)
        if self.closed:
            raise PhysMemoryError("physical memory is closed")
        return self._q, addr >> 3

    def table_words(self, addr: int) -> list[int]:
        q, base = self.frame_words(addr)
        return q[base : base + _TABLE_WORDS].tolist()

    def read_u64(self, addr: int) -> int:
        addr = int(addr)
        if addr & 7:
            raise PhysMemoryError(f"u64 access at {addr:#x} is not 8-byte aligned")
        if not 0 <= addr <= self.size - 8 or self._holes:
            self.check(addr, 8)
        try:
            return int(self._q[addr >> 3])
        except ValueError as e:  # released view
            raise _closed_error(e) from None

    def write_u64(self, addr: int, value: int) -> None:
        addr = int(addr)
        if not 0 <= value < 1 << 64:
            raise PhysMemoryError(f"{value:#x} does not fit in 64 bits")
        if addr & 7:
            raise PhysMemoryError(f"u64 access at {addr:#x} is not 8-byte aligned")
        if not 0 <= addr <= self.size - 8 or self._holes:
            self.check(addr, 8)
        try:
            self._q[addr >> 3] = value
        except ValueError as e:
            raise _closed_error(e) from None

    def _span(self, addr: int, length: int) -> memoryview:
        self.check(addr, length)
        try:
            return self._bytes[addr : addr + length]
        except ValueError as e:
            raise _closed_error(e) from None

    def close(self) -> None:
        """Release the views on the buffer (idempotent). Each view is released whatever
        happens to the other; a view that something else exported (``pickle.PickleBuffer``,
        numpy) raises `BufferError` after both were tried, and a later `close` tries again."""
        self.flat_words = None
        first_error: BufferError | None = None
        for v in (self._q, self._bytes):
            try:
                v.release()
            except BufferError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    @property
    def closed(self) -> bool:
        """Whether `close` has been called (even one that a view kept from finishing)."""
        try:
            return self._bytes.nbytes < 0 or self._q.nbytes < 0
        except ValueError:
            return True

    def __repr__(self) -> str:
        kind = type(self._buf).__name__
        holes = f", {len(self._present)} present ranges" if self._holes else ""
        return f"PhysMemory(size={self.size:#x}, backing={kind}{holes})"
