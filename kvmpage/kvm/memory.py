"""Guest RAM: an anonymous mmap that KVM uses as a memslot and kvmpage uses as `PhysMemory`.

`GuestMemory` *is* a `PhysMemory` (a subclass), so the software mapper writes page tables
straight into the guest. Physical address ``a`` of the `PhysMemory` is guest-physical address
``guest_phys_addr + a``. `close` releases the views before unmapping, so no path leaves the mmap
pinned or mapped.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Sequence

from kvmpage.memory import PhysMemory

_PAGE = 4096
_HUGE = 2 << 20
#: Linux's MAP_NORESERVE (not exported by the mmap module before Python 3.13).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class GuestMemory(PhysMemory):
    """``size`` bytes of zeroed guest RAM, backed by a private anonymous mapping."""

    __slots__ = ("_mmap", "guest_phys_addr", "host_address")

    def __init__(
        self,
        size: int,
        *,
        guest_phys_addr: int = 0,
        huge_pages: bool = False,
        present: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """``present``: the ranges of ``[0, size)`` that are RAM (each becomes its own memslot;
        the rest are holes the guest sees as MMIO). Default: all of it.

        ``huge_pages``: advise the host to back the memory with transparent huge pages.

        Measured here (scripts/bench_verify.py, 262,144 pages): verifying 1 GiB of 4 KiB
        mappings end to end took 3.2 s instead of 4.1-4.4 s in three runs of four (fewer host
        page faults when the tags are written, a cheaper CPL3 first touch), no gain in the
        fourth. But the *second* touch of 262,144 pages costs about 130 ns instead of 25 ns per
        probe (scripts/bench_kvm.py). Good for verifying a large layout once; off by default.
        """
        if size <= 0 or size % _PAGE or guest_phys_addr % _PAGE:
            raise ValueError(
                f"guest memory needs a positive 4 KiB multiple size and a 4 KiB aligned base, "
                f"got size {size:#x} at {guest_phys_addr:#x}"
            )
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        mm = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            if huge_pages and size >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
                mm.madvise(mmap.MADV_HUGEPAGE)
            anchor = ctypes.c_char.from_buffer(mm)
            address = ctypes.addressof(anchor)
            del anchor  # a live from_buffer object would pin the mmap open
            super().__init__(size, buffer=mm, present=present, absent_word="not guest RAM")
        except BaseException:
            mm.close()
            raise
        self._mmap = mm
        #: Where this memory sits in the guest-physical address space.
        self.guest_phys_addr = guest_phys_addr
        #: The host virtual address of byte 0 (what KVM_SET_USER_MEMORY_REGION needs).
        self.host_address = address

    def close(self) -> None:
        """Release every view, then unmap (idempotent; a `BufferError` leaves it to a later
        `close`, once the view that pins the memory is released)."""
        try:
            super().close()
        finally:
            self._close_mmap()

    def _close_mmap(self) -> None:
        try:
            self._mmap.close()
        except BufferError:
            raise BufferError(
                "guest memory cannot be unmapped while a view of it is alive (a memoryview from "
                "view(), a ctypes from_buffer object, a numpy array): release it, then close again"
            ) from None

    def __repr__(self) -> str:
        return f"GuestMemory(size={self.size:#x}, gpa={self.guest_phys_addr:#x})"
