"""One exception family for everything that goes wrong talking to KVM.

`KvmError` is an `OSError`, so callers that already catch ``OSError`` keep working; it carries
the errno and the name of the ioctl (or operation) that failed, and its message says what to do
about it. Subclasses name the situations a user can act on.
"""

from __future__ import annotations

import errno as errno_mod
import os


class KvmError(OSError):
    """A KVM operation failed. ``errno`` is the OS error number (0 if none), ``op`` the ioctl."""

    def __init__(self, op: str, err: int, message: str | None = None) -> None:
        text = message or f"{op} failed: {os.strerror(err) if err else 'error'}"
        if err and message:
            text += f" (errno {err}: {os.strerror(err)})"
        super().__init__(err, text)
        #: The ioctl or operation name, e.g. ``"KVM_CREATE_VM"``.
        self.op = op

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.op, self.errno or 0, self.strerror))


class KvmUnavailableError(KvmError):
    """The KVM device does not exist (no kvm module loaded, or running without virtualization)."""


class KvmPermissionError(KvmError):
    """The KVM device exists but this process may not open it read-write."""


class KvmApiVersionError(KvmError):
    """The kernel speaks a KVM API version other than the stable version 12."""


class KvmCapabilityError(KvmError):
    """A capability kvmpage needs is missing on this host."""


class KvmClosedError(KvmError):
    """An operation was attempted on a handle that has already been closed."""


_LOAD = "load the kvm module (kvm_intel, kvm_amd or kvm_pvm)"
#: Why opening the device failed, by errno: (what happened, what to do, error class).
_OPEN_FAILURES: dict[int, tuple[str, str, type[KvmError]]] = {
    errno_mod.ENOENT: (
        "no such file (ENOENT): the KVM device is missing",
        f"{_LOAD} or run on a machine with virtualization enabled",
        KvmUnavailableError,
    ),
    errno_mod.ENXIO: (
        "ENXIO, no such device or address: the device node exists but no driver answers "
        "behind it (the kvm module is not loaded, was unloaded, or the node's major/minor "
        "numbers are not KVM's, 10:232)",
        _LOAD,
        KvmUnavailableError,
    ),
    errno_mod.ENODEV: (
        "ENODEV, no such device: KVM is loaded but cannot run guests here (virtualization "
        "disabled in the firmware, or already taken by another hypervisor)",
        "enable virtualization (VT-x / AMD-V) or use a host that offers it",
        KvmUnavailableError,
    ),
    errno_mod.EACCES: (
        "permission denied (EACCES)",
        "add your user to the group that owns it (usually 'kvm') or run as root; on a file "
        "system mounted nodev no device can be opened",
        KvmPermissionError,
    ),
    errno_mod.EPERM: (
        "operation not permitted (EPERM): a security policy (seccomp, a container's device "
        "cgroup, SELinux) refuses it",
        "allow /dev/kvm in the container or policy (docker run --device /dev/kvm ...)",
        KvmPermissionError,
    ),
    errno_mod.EISDIR: ("it is a directory (EISDIR)", "give the KVM device's path", KvmError),
    errno_mod.ENOTDIR: (
        "a component of the path is not a directory (ENOTDIR)",
        "give the KVM device's path",
        KvmError,
    ),
    errno_mod.ELOOP: ("too many symbolic links (ELOOP)", "give the KVM device's path", KvmError),
    errno_mod.EROFS: ("read-only file system (EROFS)", "open a writable device node", KvmError),
    errno_mod.EMFILE: (
        "this process has too many open files (EMFILE)",
        "raise the limit (ulimit -n) or close files",
        KvmError,
    ),
    errno_mod.ENFILE: (
        "the system's file table is full (ENFILE)",
        "close files elsewhere or raise fs.file-max",
        KvmError,
    ),
    errno_mod.ENOMEM: ("the kernel is out of memory (ENOMEM)", "free memory", KvmError),
    errno_mod.EBUSY: ("the device is busy (EBUSY)", "try again", KvmError),
}


def open_error(path: str, exc: OSError) -> KvmError:
    """Turn the failure to open the KVM device into an actionable `KvmError` that names what
    happened by its errno (ENOENT, ENXIO, ENODEV, EACCES, EPERM... each has its own cause)."""
    err = exc.errno or 0
    known = _OPEN_FAILURES.get(err)
    if known is None:
        name = errno_mod.errorcode.get(err, "unknown errno")
        return KvmError("open", err, f"cannot open {path}: {name}")
    what, todo, cls = known
    return cls("open", err, f"cannot open {path}: {what}; {todo}")


def ioctl_error(op: str, exc: OSError, hint: str = "") -> KvmError:
    """Wrap the OSError of a failed ioctl, keeping its errno and naming the ioctl."""
    err = exc.errno or 0
    if err == errno_mod.EBADF:
        hint = hint or "the file descriptor is not open (was the handle closed?)"
    message = f"{op} failed" + (f": {hint}" if hint else "")
    return KvmError(op, err, message)
