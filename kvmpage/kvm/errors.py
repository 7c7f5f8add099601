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


def open_error(path: str, exc: OSError) -> KvmError:
    """Turn the failure to open the KVM device into an actionable `KvmError`."""
    err = exc.errno or 0
    if err in (errno_mod.ENOENT, errno_mod.ENXIO, errno_mod.ENODEV):
        return KvmUnavailableError(
            "open",
            err,
            f"cannot open {path}: the KVM device is missing; load the kvm module "
            "(kvm_intel / kvm_amd / kvm_pvm) or run on a machine with virtualization enabled",
        )
    if err in (errno_mod.EACCES, errno_mod.EPERM):
        return KvmPermissionError(
            "open",
            err,
            f"cannot open {path} read-write: permission denied; add your user to the group "
            f"that owns {path} (usually 'kvm') or run as root",
        )
    return KvmError("open", err, f"cannot open {path}")


def ioctl_error(op: str, exc: OSError, hint: str = "") -> KvmError:
    """Wrap the OSError of a failed ioctl, keeping its errno and naming the ioctl."""
    err = exc.errno or 0
    if err == errno_mod.EBADF:
        hint = hint or "the file descriptor is not open (was the handle closed?)"
    message = f"{op} failed" + (f": {hint}" if hint else "")
    return KvmError(op, err, message)
