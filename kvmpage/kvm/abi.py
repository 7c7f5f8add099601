"""The KVM userspace ABI for x86-64: ctypes structures, ioctl numbers and constants.

Every ioctl number is computed with the kernel's ``_IOC`` encoding from the size of the ctypes
structure it carries, never typed as a hex literal, and every structure's size and the offsets
that matter are asserted at import, so a layout mistake fails loudly before any ioctl is made.
The layouts follow ``<linux/kvm.h>`` / ``<asm/kvm.h>`` for x86-64.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, Union, c_uint8, c_uint16, c_uint32, c_uint64, sizeof

# -- _IOC encoding (include/uapi/asm-generic/ioctl.h) --------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl request number exactly like the kernel's ``_IOC`` macro."""
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (size << _IOC_SIZESHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
    )


def _IO(nr: int) -> int:
    return _IOC(IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, struct: type[ctypes._CData]) -> int:
    return _IOC(IOC_READ, KVMIO, nr, sizeof(struct))


def _IOW(nr: int, struct: type[ctypes._CData]) -> int:
    return _IOC(IOC_WRITE, KVMIO, nr, sizeof(struct))


def _IOWR(nr: int, struct: type[ctypes._CData]) -> int:
    return _IOC(IOC_READ | IOC_WRITE, KVMIO, nr, sizeof(struct))


# -- structures -----------------------------------------------------------------------------------


class kvm_regs(Structure):
    """General-purpose registers, RIP and RFLAGS (KVM_GET_REGS / KVM_SET_REGS)."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(Structure):
    """One segment register with its hidden descriptor cache."""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(Structure):
    """A descriptor-table register (GDTR / IDTR)."""

    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(Structure):
    """Segment, descriptor-table and control registers (KVM_GET_SREGS / KVM_SET_SREGS)."""

    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_userspace_memory_region(Structure):
    """A memslot: guest-physical range backed by host virtual memory."""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_cpuid_entry2(Structure):
    """One CPUID leaf/subleaf."""

    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class kvm_cpuid2(Structure):
    """Header of the flexible CPUID array; use `cpuid2_type` for a sized instance."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


def cpuid2_type(nent: int) -> type[Structure]:
    """A ``kvm_cpuid2`` structure type with room for ``nent`` entries."""
    return _sized(kvm_cpuid2, "entries", kvm_cpuid_entry2, nent)


class kvm_translation(Structure):
    """KVM_TRANSLATE: linear address in, physical address and validity out."""

    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class kvm_msr_entry(Structure):
    """One MSR index/value pair."""

    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(Structure):
    """Header of the flexible MSR array; use `msrs_type` for a sized instance."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


def msrs_type(nmsrs: int) -> type[Structure]:
    """A ``kvm_msrs`` structure type with room for ``nmsrs`` entries."""
    return _sized(kvm_msrs, "entries", kvm_msr_entry, nmsrs)


_SIZED_CACHE: dict[tuple[str, int], type[Structure]] = {}


def _sized(
    header: type[Structure], field: str, entry: type[Structure], count: int
) -> type[Structure]:
    """A subclass of ``header`` followed by ``count`` entries (a C flexible array member)."""
    key = (header.__name__, count)
    cached = _SIZED_CACHE.get(key)
    if cached is None:
        cached = type(
            f"{header.__name__}_{count}",
            (Structure,),
            {"_fields_": [*header._fields_, (field, entry * count)]},
        )
        _SIZED_CACHE[key] = cached
    return cached


# kvm_run: the page shared with the kernel through mmap of the vCPU fd.


class kvm_run_io(Structure):
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class kvm_run_mmio(Structure):
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class kvm_run_fail_entry(Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_internal(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_debug(Structure):
    _fields_ = [("exception", c_uint32), ("pad", c_uint32), ("pc", c_uint64),
                ("dr6", c_uint64), ("dr7", c_uint64)]  # fmt: skip


class kvm_run_system_event(Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_hw(Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class kvm_run_exit_union(Union):
    """The exit-specific payload of kvm_run (256 bytes)."""

    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", c_uint8 * 256),
    ]


class kvm_run(Structure):
    """The fixed head of the mmapped kvm_run page (up to and including the exit union)."""

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", kvm_run_exit_union),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
    ]


# -- exit reasons ---------------------------------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# -- capabilities (KVM_CHECK_EXTENSION) -----------------------------------------------------------

KVM_API_VERSION = 12
KVM_CAP_USER_MEMORY = 3
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# -- ioctl numbers --------------------------------------------------------------------------------

# on /dev/kvm
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, kvm_cpuid2)
# on a VM fd
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, kvm_userspace_memory_region)
# on a vCPU fd
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, kvm_regs)
KVM_SET_REGS = _IOW(0x82, kvm_regs)
KVM_GET_SREGS = _IOR(0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(0x85, kvm_translation)
KVM_GET_MSRS = _IOWR(0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(0x89, kvm_msrs)
KVM_SET_CPUID2 = _IOW(0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(0x91, kvm_cpuid2)

#: Every ioctl number by name, for error messages and the golden-table test.
IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith("KVM_") and name.isupper() and isinstance(value, int)
    and name not in ("KVM_API_VERSION", "KVM_NR_INTERRUPTS") and value >= KVMIO << 8
    and not name.startswith(("KVM_EXIT_", "KVM_CAP_", "KVM_MEM_", "KVM_CPUID_"))
}  # fmt: skip

# -- layout assertions (fail at import, never at run time) ----------------------------------------


def _offset(struct: type[Structure], field: str) -> int:
    return int(getattr(struct, field).offset)


def _check_layouts() -> None:
    """Raise AssertionError (even under ``python -O``) if a structure differs from the uapi."""
    expected_sizes: dict[type[ctypes._CData], int] = {
        kvm_regs: 144,
        kvm_segment: 24,
        kvm_dtable: 16,
        kvm_sregs: 312,
        kvm_userspace_memory_region: 32,
        kvm_cpuid_entry2: 40,
        kvm_cpuid2: 8,
        kvm_translation: 24,
        kvm_msr_entry: 16,
        kvm_msrs: 8,
        kvm_run_exit_union: 256,
        kvm_run: 304,
    }
    for struct, size in expected_sizes.items():
        if sizeof(struct) != size:
            raise AssertionError(f"{struct.__name__} is {sizeof(struct)} bytes, not {size}")
    expected_offsets = [
        (kvm_sregs, "gdt", 192),
        (kvm_sregs, "cr0", 224),
        (kvm_sregs, "efer", 264),
        (kvm_sregs, "interrupt_bitmap", 280),
        (kvm_run, "immediate_exit", 1),
        (kvm_run, "exit_reason", 8),
        (kvm_run, "exit", 32),
        (kvm_run, "kvm_valid_regs", 288),
        (kvm_run_io, "data_offset", 8),
        (kvm_run_mmio, "len", 16),
        (kvm_run_mmio, "is_write", 20),
        (kvm_run_internal, "data", 8),
        (kvm_translation, "valid", 16),
    ]
    for struct, field, off in expected_offsets:
        got = _offset(struct, field)
        if got != off:
            raise AssertionError(f"{struct.__name__}.{field} at offset {got}, not {off}")


_check_layouts()
