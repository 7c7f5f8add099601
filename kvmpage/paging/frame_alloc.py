"""Frame allocators: the `FrameAllocator` / `FrameDeallocator` protocols and two allocators.

Mappers only ever ask for 4 KiB frames, for new page tables (rule FA-03); the caller supplies leaf
frames. `allocate_frame` returns None when memory is exhausted, which a mapper turns into
`FrameAllocationFailed`. Both allocators here record what they hand out and take back, in order,
so tests can check allocation order (FA-04) and clean-up order (C-04).

- `BumpFrameAllocator`: hands out ``[start, end)`` in order; never reuses.
- `PoolFrameAllocator`: the same, plus `deallocate_frame`; freed frames are reused lowest first.
  A frame it did not hand out, or one freed twice, is refused with `FrameDeallocationError`.

Neither ever hands out a frame outside its range (which, given a memory, must lie inside it) or
the same frame twice while it is in use.
"""

from __future__ import annotations

import heapq
import operator
from typing import Any, Generic, Protocol, TypeVar

from kvmpage.memory import PhysicalMemory, PhysMemoryError
from kvmpage.paging.page import PageSize, PhysFrame, Size4KiB, _check_size

S_co = TypeVar("S_co", bound=PageSize)
S_contra = TypeVar("S_contra", bound=PageSize)


class FrameAllocator(Protocol[S_co]):
    """Hands out unused frames (FA-01): each frame returned is unique and not in use."""

    def allocate_frame(self) -> PhysFrame[S_co] | None:
        """An unused frame, or None when none is left."""


class FrameDeallocator(Protocol[S_contra]):
    """Takes frames back (FA-02); only `CleanUp` calls it."""

    def deallocate_frame(self, frame: PhysFrame[S_contra]) -> None:
        """Return ``frame``; the caller promises it is no longer used."""


def _address(value: Any, name: str) -> int:
    """A physical address given as an int or a `PhysAddr` (not a float, a string or a bool)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        kind = type(value).__name__
        raise TypeError(f"{name} must be an int or a PhysAddr, got {kind}") from None
    if v < 0:
        raise ValueError(f"{name} must not be negative, got {v:#x}")
    return v


class FrameDeallocationError(ValueError):
    """A frame given back that this allocator did not hand out, or that is already free."""


class BumpFrameAllocator(Generic[S_co]):
    """Frames of ``size`` from ``start`` (inclusive) to ``end`` (exclusive), in ascending order.

    ``start`` / ``end`` are physical addresses (ints or `PhysAddr`) aligned to the frame size.
    With ``memory``, the range must lie inside it (checked once, here).
    """

    def __init__(
        self,
        start: int,
        end: int,
        *,
        size: type[PageSize] = Size4KiB,
        memory: PhysicalMemory | None = None,
    ) -> None:
        size = _check_size(size)
        s, e = _address(start, "start"), _address(end, "end")
        if memory is not None and not isinstance(memory, PhysicalMemory):
            raise TypeError(f"memory must be a PhysicalMemory or None, got {type(memory).__name__}")
        if s % size.SIZE or e % size.SIZE:
            raise ValueError(
                f"allocator range [{s:#x}, {e:#x}) is not aligned to {size.DEBUG_STR} frames"
            )
        if e < s:
            raise ValueError(f"allocator range [{s:#x}, {e:#x}) ends before it starts")
        if memory is not None and not memory.contains(s, e - s):
            raise PhysMemoryError(
                f"allocator range [{s:#x}, {e:#x}) is outside memory [0, {memory.size:#x})"
            )
        self._frame_type: Any = PhysFrame[size]  # type: ignore[valid-type]
        self._step = size.SIZE
        self._next = s
        self.start = s
        self.end = e
        #: Every frame handed out, in order.
        self.allocated: list[PhysFrame[S_co]] = []

    def allocate_frame(self) -> PhysFrame[S_co] | None:
        """The next frame, or None when the range is exhausted."""
        if self._next >= self.end:
            return None
        frame = self._frame_type._make(self._next)
        self._next += self._step
        self.allocated.append(frame)
        return frame  # type: ignore[no-any-return]

    def remaining(self) -> int:
        """Frames not yet handed out."""
        return (self.end - self._next) // self._step

    def allocate_contiguous(self, length: int, align: int) -> int | None:
        """Reserve ``length`` bytes aligned to ``align`` from the fresh part of the range.

        For leaf memory (a run of huge-page frames, say), not for page tables: the frames are
        never handed out by `allocate_frame`. Returns the physical start, or None when the rest
        of the range is too small. The frames skipped to reach the alignment are lost.
        """
        for value, name in ((length, "length"), (align, "align")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if length < 0:
            raise ValueError(f"length must not be negative, got {length}")
        if align <= 0 or align & (align - 1):
            raise ValueError(f"align must be a power of two, got {align}")
        start = -(-self._next // align) * align
        if start + length > self.end:
            return None
        self._next = -(-(start + length) // self._step) * self._step
        return start

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}([{self.start:#x}, {self.end:#x}), "
            f"next={self._next:#x}, remaining={self.remaining()})"
        )


class PoolFrameAllocator(BumpFrameAllocator[S_co]):
    """A `BumpFrameAllocator` that also takes frames back and reuses them, lowest first."""

    def __init__(
        self,
        start: int,
        end: int,
        *,
        size: type[PageSize] = Size4KiB,
        memory: PhysicalMemory | None = None,
    ) -> None:
        super().__init__(start, end, size=size, memory=memory)
        self._free: list[int] = []
        self._in_use: set[int] = set()
        #: Every frame taken back, in order.
        self.deallocated: list[PhysFrame[S_co]] = []

    def allocate_frame(self) -> PhysFrame[S_co] | None:
        """A freed frame (lowest first) or the next fresh one; None when both are exhausted."""
        if self._free:
            start = heapq.heappop(self._free)
        else:  # the bump path, inlined: this is on every table creation of a mapper
            start = self._next
            if start >= self.end:
                return None
            self._next = start + self._step
        frame = self._frame_type._make(start)
        self.allocated.append(frame)
        self._in_use.add(start)
        return frame  # type: ignore[no-any-return]

    def deallocate_frame(self, frame: PhysFrame[S_co]) -> None:
        """Take ``frame`` back; refuse one not handed out by this allocator or already free."""
        if type(frame) is not self._frame_type:
            raise TypeError(f"this allocator manages {self._frame_type.__name__}, not {frame!r}")
        if frame._start not in self._in_use:
            raise FrameDeallocationError(
                f"{frame!r} was not handed out by this allocator or is already free"
            )
        self._in_use.remove(frame._start)
        heapq.heappush(self._free, frame._start)
        self.deallocated.append(frame)

    def in_use(self) -> int:
        """Frames handed out and not taken back."""
        return len(self._in_use)

    def remaining(self) -> int:
        """Frames that can still be handed out (fresh or reused)."""
        return super().remaining() + len(self._free)
