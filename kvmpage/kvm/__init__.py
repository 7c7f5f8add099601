"""Thin typed KVM bindings: ABI structures and ioctl numbers, owning handles, typed exits, errors,
guest memory, and the host profile record. Linux only; needs a readable-writable /dev/kvm."""

from kvmpage.kvm.errors import (
    KvmApiVersionError,
    KvmCapabilityError,
    KvmClosedError,
    KvmError,
    KvmPermissionError,
    KvmUnavailableError,
)
from kvmpage.kvm.exits import (
    Exit,
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    InterruptedExit,
    IoExit,
    MmioExit,
    ShutdownExit,
    UnknownExit,
)
from kvmpage.kvm.handles import DEFAULT_DEVICE, Kvm, Vcpu, Vm
from kvmpage.kvm.host import HostProfile, HypervisorKind
from kvmpage.kvm.memory import GuestMemory

__all__ = [
    "DEFAULT_DEVICE",
    "Exit",
    "FailEntryExit",
    "GuestMemory",
    "HltExit",
    "HostProfile",
    "HypervisorKind",
    "InternalErrorExit",
    "InterruptedExit",
    "IoExit",
    "Kvm",
    "KvmApiVersionError",
    "KvmCapabilityError",
    "KvmClosedError",
    "KvmError",
    "KvmPermissionError",
    "KvmUnavailableError",
    "MmioExit",
    "ShutdownExit",
    "UnknownExit",
    "Vcpu",
    "Vm",
]
