"""Physical memory: the one interface through which kvmpage reads and writes page tables.

`PhysMemory` is a flat, zero-initialised physical address space ``[0, size)``. It is backed by
any writable buffer: a ``bytearray`` for pure software use, or the ``mmap`` that is registered
with KVM as guest RAM, so that the software mapper writes straight into the guest.

Every access is bounds-checked: an address outside the memory raises `PhysMemoryError` and
nothing is written. Table entries are little-endian ``u64`` values at 8-byte aligned addresses,
exactly as an x86-64 CPU reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpage.paging.table import PageTable

_FRAME = 4096


class PhysMemoryError(Exception):
    """A physical access fell outside the memory, was misaligned, or the memory is closed."""


class PhysMemory:
    """A physical address space of ``size`` bytes starting at physical address 0.

    ``buffer`` (optional) is any writable object supporting the buffer protocol whose length is
    ``size`` rounded to whole 4 KiB frames; without it a zeroed ``bytearray`` is allocated. The
    memory keeps a ``memoryview`` on the buffer; call `close` (or use ``with``) before closing an
    mmap buffer, or the mmap will refuse to close.
    """

    __slots__ = ("_buf", "_bytes", "_q", "size")

    def __init__(self, size: int, *, buffer: Any = None) -> None:
        if size <= 0 or size % _FRAME:
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

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the views on the buffer (idempotent). Later accesses raise `PhysMemoryError`."""
        for v in (self._q, self._bytes):
            v.release()

    def __enter__(self) -> PhysMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether `close` has been called."""
        try:
            return self._bytes.nbytes < 0
        except ValueError:
            return True

    # -- checks ---------------------------------------------------------------------------

    def contains(self, addr: int, length: int = 1) -> bool:
        """Whether ``[addr, addr + length)`` lies inside the memory."""
        return addr >= 0 and length >= 0 and addr + length <= self.size

    def check(self, addr: int, length: int = 1) -> None:
        """Raise `PhysMemoryError` unless ``[addr, addr + length)`` lies inside the memory."""
        if not self.contains(int(addr), length):
            raise PhysMemoryError(
                f"physical range {int(addr):#x}+{length:#x} is outside memory [0, {self.size:#x})"
            )

    def _word(self, addr: int) -> int:
        addr = int(addr)
        if addr & 7:
            raise PhysMemoryError(f"u64 access at {addr:#x} is not 8-byte aligned")
        self.check(addr, 8)
        return addr >> 3

    # -- access ---------------------------------------------------------------------------

    def read_u64(self, addr: int) -> int:
        """Read the little-endian u64 at the 8-byte aligned physical address ``addr``."""
        try:
            return int(self._q[self._word(addr)])
        except ValueError as e:  # released view
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def write_u64(self, addr: int, value: int) -> None:
        """Write ``value`` (0 <= value < 2**64) as a little-endian u64 at ``addr``."""
        if not 0 <= value < 1 << 64:
            raise PhysMemoryError(f"{value:#x} does not fit in 64 bits")
        try:
            self._q[self._word(addr)] = value
        except ValueError as e:
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def read(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``addr``."""
        self.check(addr, length)
        addr = int(addr)
        try:
            return bytes(self._bytes[addr : addr + length])
        except ValueError as e:
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to ``addr``; nothing is written if any byte would be out of range."""
        n = len(memoryview(data).cast("B"))
        self.check(addr, n)
        addr = int(addr)
        try:
            self._bytes[addr : addr + n] = memoryview(data).cast("B")
        except ValueError as e:
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def zero(self, addr: int, length: int) -> None:
        """Set ``length`` bytes starting at ``addr`` to zero."""
        self.check(addr, length)
        addr = int(addr)
        try:
            self._bytes[addr : addr + length] = bytes(length)
        except ValueError as e:
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def view(self, addr: int, length: int) -> memoryview:
        """A live byte view of ``[addr, addr + length)`` (writes through to the memory).

        Release it (``view.release()``) before closing an mmap buffer: while it lives, the mmap
        refuses to close even after `close`.
        """
        self.check(addr, length)
        addr = int(addr)
        try:
            return self._bytes[addr : addr + length]
        except ValueError as e:
            raise PhysMemoryError(f"physical memory is closed: {e}") from None

    def table(self, addr: int) -> PageTable:
        """The 512-entry `PageTable` stored in the 4 KiB frame at physical address ``addr``."""
        from kvmpage.paging.table import PageTable

        if self.closed:
            raise PhysMemoryError("physical memory is closed")
        return PageTable(self, addr)

    def __repr__(self) -> str:
        kind = type(self._buf).__name__
        return f"PhysMemory(size={self.size:#x}, backing={kind})"
