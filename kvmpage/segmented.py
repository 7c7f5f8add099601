"""`SegmentedMemory`: sparse physical memory made of segments, each a view of its own buffer.

The physical memory of a memory image (`kvmpage.image`): every segment is a slice of the file's
``mmap`` (read-only, or private copy-on-write), at any offset in it (image formats put headers
before the data). An address no segment covers is absent (`kvmpage.memory.AbsentMemoryError`),
never zeros. Implements `kvmpage.memory.PhysicalMemory`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from kvmpage.memory import FRAME, PhysicalMemory, PhysMemoryError, Ranges

#: frames `SegmentedMemory.frame_words` remembers at most (page tables: a few thousand)
_FRAMES_KEPT = 1 << 16


class Segment:
    """``len(data)`` bytes of physical memory from physical address ``start``.

    ``data`` is any buffer (a slice of a file's ``mmap``); its start need not be aligned in the
    buffer (memory image formats put headers before the data).
    """

    __slots__ = ("_bytes", "_q", "end", "start")

    def __init__(self, start: int, data: Any) -> None:
        view = memoryview(data).cast("B")
        if start < 0 or start % 8 or len(view) % 8:
            n = len(view)
            view.release()
            raise PhysMemoryError(
                f"a segment must start and end on 8-byte boundaries, got {start:#x}+{n:#x}"
            )
        self.start = start
        self.end = start + len(view)
        self._bytes = view
        self._q = view.cast("Q")

    def release(self) -> None:
        self._q.release()
        self._bytes.release()


class SegmentedMemory(PhysicalMemory):
    """Sparse physical memory: disjoint `Segment` views, sorted by address.

    ``readonly``: refuse writes even when the buffers are writable. Buffers that are read-only
    (``mmap.ACCESS_READ``) make the memory read-only in any case.
    """

    absent_word = "not in the image"

    def __init__(
        self, segments: Sequence[Segment], *, readonly: bool = True, absent_word: str = ""
    ) -> None:
        ordered = sorted(segments, key=lambda s: s.start)
        for a, b in itertools.pairwise(ordered):
            if b.start < a.end:
                raise PhysMemoryError(
                    f"segments overlap: {a.start:#x}-{a.end:#x} and {b.start:#x}-{b.end:#x}"
                )
        self._segments = ordered
        self._starts = [s.start for s in ordered]
        self._present = Ranges((s.start, s.end) for s in ordered)
        self.size = ordered[-1].end if ordered else 0
        self.readonly = readonly or any(s._bytes.readonly for s in ordered)
        self._closed = False
        if absent_word:
            self.absent_word = absent_word
        self._copies: dict[int, memoryview] = {}
        self._frames: dict[int, tuple[memoryview, int]] = {}
        # one segment from 0 to a frame boundary (a raw image, a small guest's core): flat
        if len(ordered) == 1 and ordered[0].start == 0 and ordered[0].end % FRAME == 0:
            self.flat_words = ordered[0]._q

    @property
    def segments(self) -> list[Segment]:
        """The segments, in address order."""
        return list(self._segments)

    def present(self) -> Ranges:
        return self._present

    def contains(self, addr: int, length: int = 1) -> bool:
        if addr < 0 or length < 0:
            return False
        return self._present.covers(addr, max(length, 1))

    def _segment(self, addr: int, length: int) -> Segment | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        seg = self._segments[i]
        return seg if addr + length <= seg.end else None

    def frame_words(self, addr: int) -> tuple[memoryview, int]:
        # the frames asked for are remembered: a walk asks for the same few tables again and
        # again (a segment lookup costs four times a dict lookup); emptied when closed
        found = self._frames.get(addr)
        if found is not None:
            return found
        addr = int(addr)
        if addr & (FRAME - 1):
            raise PhysMemoryError(f"a frame address must be 4 KiB aligned, got {addr:#x}")
        if self._closed:
            raise PhysMemoryError("physical memory is closed")
        if len(self._frames) >= _FRAMES_KEPT:
            self._frames.clear()
        seg = self._segment(addr, FRAME)
        if seg is not None:
            found = self._frames[addr] = (seg._q, (addr - seg.start) >> 3)
            return found
        self.check(addr, FRAME)
        # present, but split over adjacent segments: a read-only copy of the frame
        copy = self._copies.get(addr)
        if copy is None:
            copy = memoryview(self._gather(addr, FRAME)).toreadonly().cast("Q")
            self._copies[addr] = copy
        return copy, 0

    def _word_view(self, addr: int) -> tuple[memoryview, int]:
        if self._closed:
            raise PhysMemoryError("physical memory is closed")
        seg = self._segment(addr, 8)
        if seg is None:
            self.check(addr, 8)
            raise AssertionError("unreachable: segments are 8-byte aligned")
        return seg._q, (addr - seg.start) >> 3

    def _gather(self, addr: int, length: int) -> bytes:
        out = bytearray()
        end = addr + length
        while addr < end:
            seg = self._segment(addr, 1)
            assert seg is not None
            stop = min(end, seg.end)
            out += seg._bytes[addr - seg.start : stop - seg.start]
            addr = stop
        return bytes(out)

    def _span(self, addr: int, length: int) -> memoryview:
        if self._closed:
            raise PhysMemoryError("physical memory is closed")
        seg = self._segment(addr, length)
        if seg is None:
            self.check(addr, length)
            raise PhysMemoryError(
                f"physical range {addr:#x}+{length:#x} spans several segments: read it in parts"
            )
        return seg._bytes[addr - seg.start : addr - seg.start + length]

    def read(self, addr: int, length: int) -> bytes:
        addr = int(addr)
        if self._segment(addr, length) is None and self.contains(addr, length):
            return self._gather(addr, length)
        return bytes(self._span(addr, length))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flat_words = None
        self._frames.clear()
        for copy in self._copies.values():
            copy.release()
        self._copies.clear()
        for seg in self._segments:
            seg.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return (
            f"SegmentedMemory({len(self._segments)} segments, {self._present.total:#x} bytes, "
            f"{mode})"
        )
