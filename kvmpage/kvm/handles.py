"""Owning handles: `Kvm` (the device) -> `Vm` -> `Vcpu`.

Each handle owns its file descriptor (and the vCPU its kvm_run mapping), is a context manager,
and has an idempotent `close`. A `Vm` also owns the vCPUs and guest memories it created and
closes them first, so closing the outermost handle releases everything, on every path. A failed
ioctl raises `KvmError` naming the ioctl and carrying errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Sequence
from typing import Any, Self

from kvmpage.kvm import abi
from kvmpage.kvm.errors import (
    KvmApiVersionError,
    KvmCapabilityError,
    KvmClosedError,
    KvmError,
    ioctl_error,
    open_error,
)
from kvmpage.kvm.exits import Exit, decode_exit
from kvmpage.kvm.memory import GuestMemory
from kvmpage.kvm.signals import signals_deferred

DEFAULT_DEVICE = "/dev/kvm"

#: KVM_GET_SUPPORTED_CPUID costs ~0.3 ms and never changes while the module is loaded.
_SUPPORTED_CPUID_CACHE: dict[str, bytes] = {}

#: What a machine needs: guest RAM from user memory, CPUID control, and `immediate_exit` so
#: the watchdog cannot lose a kick.
REQUIRED_CAPABILITIES = (
    (abi.KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
    (abi.KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
    (abi.KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"),
)
_CAPABILITIES_CHECKED: set[str] = set()


class _FdHandle:
    """A file descriptor plus the ioctl helper shared by all handles."""

    _fd: int

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        """The raw file descriptor (-1 once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _ioctl(self, request: int, arg: Any = 0, hint: str = "") -> int:
        if self._fd < 0:
            name = abi.IOCTL_NAMES.get(request, hex(request))
            raise KvmClosedError(name, 0, f"{name} on a closed {type(self).__name__}")
        try:
            if isinstance(arg, int):
                return int(fcntl.ioctl(self._fd, request, arg))
            return int(fcntl.ioctl(self._fd, request, arg, True))
        except OSError as e:
            raise ioctl_error(abi.IOCTL_NAMES.get(request, hex(request)), e, hint) from None

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            # Linux releases the descriptor even when close reports an error (EINTR, EIO)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the handle (idempotent)."""
        self._close_fd()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class Kvm(_FdHandle):
    """The KVM device. Checks the API version on open."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        self._fd = -1
        self.path = path
        self._vcpu_mmap_size: int | None = None
        with signals_deferred():  # the descriptor is owned as soon as it exists
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise open_error(path, e) from None
            super().__init__(fd)
        try:
            self._check_api_version()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_fd(cls, fd: int, path: str = "<fd>") -> Kvm:
        """Adopt an already open descriptor (no checks; mostly for tests of the error paths)."""
        self = cls.__new__(cls)
        _FdHandle.__init__(self, fd)
        self.path = path
        self._vcpu_mmap_size = None
        return self

    def close(self) -> None:
        self._close_fd()

    def _check_api_version(self) -> None:
        version = self.api_version()
        if version != abi.KVM_API_VERSION:
            raise KvmApiVersionError(
                "KVM_GET_API_VERSION",
                0,
                f"{self.path} speaks KVM API version {version}, kvmpage needs "
                f"{abi.KVM_API_VERSION}; this kernel's KVM is not supported",
            )

    def api_version(self) -> int:
        return self._ioctl(
            abi.KVM_GET_API_VERSION, 0, f"is {getattr(self, 'path', '?')} a KVM device?"
        )

    def check_extension(self, cap: int) -> int:
        """The raw KVM_CHECK_EXTENSION answer (0 = unsupported)."""
        return self._ioctl(abi.KVM_CHECK_EXTENSION, cap)

    def require_extension(self, cap: int, name: str) -> int:
        """Like `check_extension`, but a missing capability raises `KvmCapabilityError`."""
        value = self.check_extension(cap)
        if value <= 0:
            raise KvmCapabilityError(
                "KVM_CHECK_EXTENSION", 0, f"this KVM lacks the capability {name} ({cap})"
            )
        return value

    def require_machine_capabilities(self) -> None:
        """Check (once per device) the capabilities a kvmpage machine relies on."""
        if self.path in _CAPABILITIES_CHECKED:
            return
        for cap, name in REQUIRED_CAPABILITIES:
            self.require_extension(cap, name)
        _CAPABILITIES_CHECKED.add(self.path)

    def vcpu_mmap_size(self) -> int:
        if self._vcpu_mmap_size is None:
            self._vcpu_mmap_size = self._ioctl(abi.KVM_GET_VCPU_MMAP_SIZE)
        return self._vcpu_mmap_size

    def supported_cpuid(self) -> list[abi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, cached per device path for the life of the process."""
        raw = _SUPPORTED_CPUID_CACHE.get(self.path)
        if raw is None:
            nent = 256
            while True:
                buf = abi.cpuid2_type(nent)()
                buf.nent = nent
                try:
                    self._ioctl(abi.KVM_GET_SUPPORTED_CPUID, buf)
                    break
                except KvmError as e:
                    if e.errno != errno.E2BIG or nent >= 4096:  # the buffer is too small
                        raise
                    nent *= 2
            n = int(buf.nent)
            raw = bytes(buf.entries)[: n * ctypes.sizeof(abi.kvm_cpuid_entry2)]
            _SUPPORTED_CPUID_CACHE[self.path] = raw
        size = ctypes.sizeof(abi.kvm_cpuid_entry2)
        return [abi.kvm_cpuid_entry2.from_buffer_copy(raw, i) for i in range(0, len(raw), size)]

    def create_vm(self) -> Vm:
        with signals_deferred():
            return Vm(self, self._ioctl(abi.KVM_CREATE_VM, 0))


class Vm(_FdHandle):
    """A virtual machine. Owns the vCPUs and guest memories created through it."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm
        self._vcpus: list[Vcpu] = []
        self._memories: list[GuestMemory] = []
        self._next_slot = 0

    def close(self) -> None:
        """Close vCPUs, then the VM fd (which drops the memslots), then unmap guest memory.

        Idempotent and exception-safe: every step runs whatever the others did, SIGINT and
        SIGTERM wait until it is over (`signals_deferred`), and the first error is raised at
        the end. Guest memory that a caller still holds a view of raises `BufferError` and is
        kept, so a later `close` (once the view is released) unmaps it.
        """
        with signals_deferred():
            first_error: Exception | None = None
            for vcpu in self._vcpus:
                try:
                    vcpu.close()
                except Exception as e:
                    first_error = first_error or e
            self._vcpus.clear()
            self._close_fd()
            pinned: list[GuestMemory] = []
            for memory in self._memories:
                try:
                    memory.close()
                except BufferError as e:  # a caller still holds a view; keep it for a later close
                    pinned.append(memory)
                    first_error = first_error or e
            self._memories = pinned
        if first_error is not None:
            raise first_error

    def check_extension(self, cap: int) -> int:
        return self._ioctl(abi.KVM_CHECK_EXTENSION, cap)

    def add_memory(
        self,
        size: int,
        guest_phys_addr: int = 0,
        *,
        readonly: bool = False,
        huge_pages: bool = False,
        present: Sequence[tuple[int, int]] | None = None,
    ) -> GuestMemory:
        """Allocate ``size`` bytes of guest RAM at ``guest_phys_addr`` and register it
        (``huge_pages``, ``present``: see `GuestMemory`; each present range is a memslot, so
        the guest sees the holes between them as MMIO)."""
        memory = GuestMemory(
            size, guest_phys_addr=guest_phys_addr, huge_pages=huge_pages, present=present
        )
        ranges = list(memory.present())
        added: list[int] = []
        try:
            limit = self.check_extension(abi.KVM_CAP_NR_MEMSLOTS) or 32
            if self._next_slot + len(ranges) > limit:
                raise KvmError(
                    "KVM_SET_USER_MEMORY_REGION", errno.ENOSPC,
                    f"{len(ranges)} RAM ranges need as many memslots; this host allows {limit}",
                )  # fmt: skip
            for start, end in ranges:
                self.set_memory_region(
                    self._next_slot, guest_phys_addr + start, end - start,
                    memory.host_address + start, abi.KVM_MEM_READONLY if readonly else 0,
                )  # fmt: skip
                added.append(self._next_slot)
                self._next_slot += 1
        except BaseException:
            for slot in added:  # KVM must not keep a slot onto memory about to be unmapped
                with contextlib.suppress(KvmError):
                    self.set_memory_region(slot, 0, 0, 0)
            memory.close()
            raise
        self._memories.append(memory)
        return memory

    def set_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, host_address: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION; ``size`` 0 deletes the slot. The caller owns the memory."""
        region = abi.kvm_userspace_memory_region(slot, flags, guest_phys_addr, size, host_address)
        self._ioctl(abi.KVM_SET_USER_MEMORY_REGION, region)

    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        size = self.kvm.vcpu_mmap_size()
        with signals_deferred():
            fd = self._ioctl(abi.KVM_CREATE_VCPU, vcpu_id)
            vcpu = Vcpu(fd, size)  # owns fd from here on, also when it fails
            self._vcpus.append(vcpu)
        return vcpu


class Vcpu(_FdHandle):
    """A virtual CPU and its mapped kvm_run page.

    The `abi.kvm_run` structure is laid over the page by address, not with ``from_buffer``:
    a ``from_buffer`` object exports the mmap, and one left in a frame of a traceback (Ctrl-C
    inside `run`) made the mmap refuse to close, so the vCPU fd leaked with it. Nothing here
    keeps the structure past `close`, which drops it before unmapping.
    """

    def __init__(self, fd: int, mmap_size: int) -> None:
        """Take ownership of ``fd`` (closed here if the kvm_run page cannot be mapped)."""
        super().__init__(fd)
        self._mmap: mmap.mmap | None = None
        self._run: abi.kvm_run | None = None
        try:
            self._mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.close()
            raise KvmError(
                "mmap(kvm_run)", e.errno or 0, "cannot map the vCPU's kvm_run page"
            ) from None
        anchor = ctypes.c_char.from_buffer(self._mmap)
        self._run_address = ctypes.addressof(anchor)
        del anchor  # a live from_buffer object would pin the mmap open
        self._run = abi.kvm_run.from_address(self._run_address)

    @classmethod
    def from_fd(cls, fd: int, mmap_size: int = 4096) -> Vcpu:
        """Adopt (and own) a vCPU descriptor (mostly for error-path tests)."""
        return cls(fd, mmap_size)

    def close(self) -> None:
        """Drop the kvm_run structure, unmap its page, close the fd (idempotent; the fd is
        closed whatever happens to the mapping)."""
        with signals_deferred():
            self._run = None
            mm, self._mmap = self._mmap, None
            try:
                if mm is not None:
                    mm.close()
            finally:
                self._close_fd()

    @property
    def run_struct(self) -> abi.kvm_run:
        if self._run is None:
            raise KvmClosedError("kvm_run", 0, "the vCPU is closed")
        return self._run

    # -- registers ------------------------------------------------------------------------

    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        self._ioctl(abi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        self._ioctl(abi.KVM_SET_REGS, regs)

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        self._ioctl(abi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        self._ioctl(abi.KVM_SET_SREGS, sregs, "the host rejected a control register or segment")

    def set_cpuid(self, entries: list[abi.kvm_cpuid_entry2]) -> None:
        buf = abi.cpuid2_type(len(entries))()
        buf.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        self._ioctl(abi.KVM_SET_CPUID2, buf)

    def set_cpuid_raw(self, buf: ctypes.Structure) -> None:
        """KVM_SET_CPUID2 with a prebuilt ``cpuid2_type(n)`` instance (fast path, no copy)."""
        self._ioctl(abi.KVM_SET_CPUID2, buf)

    def get_cpuid(self, max_entries: int = 256) -> list[abi.kvm_cpuid_entry2]:
        """KVM_GET_CPUID2: the CPUID table the guest will actually see."""
        buf = abi.cpuid2_type(max_entries)()
        buf.nent = max_entries
        self._ioctl(abi.KVM_GET_CPUID2, buf)
        return [abi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(int(buf.nent))]

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = abi.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = self._ioctl(abi.KVM_GET_MSRS, buf)
        return {int(e.index): int(e.data) for e in buf.entries[:n]}

    def set_msrs(self, values: dict[int, int]) -> int:
        buf = abi.msrs_type(len(values))()
        buf.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i].index = index
            buf.entries[i].data = data
        return self._ioctl(abi.KVM_SET_MSRS, buf)

    def translate(self, linear_address: int) -> abi.kvm_translation:
        """KVM_TRANSLATE: KVM's own walk of the current guest tables (ignores U/S and R/W)."""
        tr = abi.kvm_translation(linear_address=linear_address)
        self._ioctl(abi.KVM_TRANSLATE, tr)
        return tr

    # -- running --------------------------------------------------------------------------

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    def run(self) -> Exit:
        """One KVM_RUN (the GIL is released meanwhile). A signal yields `InterruptedExit`."""
        run = self.run_struct
        try:
            fcntl.ioctl(self._fd, abi.KVM_RUN, 0)
        except InterruptedError:
            run.exit_reason = abi.KVM_EXIT_INTR
        except OSError as e:
            raise ioctl_error("KVM_RUN", e) from None
        return decode_exit(run, self._run_address)
