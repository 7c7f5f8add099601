"""Typed KVM_RUN exits, decoded from the kvm_run page.

`decode_exit` copies what the exit says out of the shared page into a small frozen dataclass, so an
exit object stays valid after the next KVM_RUN overwrites the page. Exit reasons kvmpage does not
model become `UnknownExit` with the raw code, never a KeyError.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from kvmpage.kvm import abi


@dataclass(frozen=True, slots=True)
class Exit:
    """Base of every exit. ``reason`` is the raw ``exit_reason`` code."""

    reason: int


@dataclass(frozen=True, slots=True)
class IoExit(Exit):
    """Port I/O (``in``/``out``). ``data`` is the bytes written by an ``out`` (empty for ``in``)."""

    port: int
    size: int
    count: int
    is_write: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioExit(Exit):
    """An access to a guest-physical address with no memslot behind it."""

    phys_addr: int
    length: int
    is_write: bool
    data: bytes

    @property
    def value(self) -> int:
        """The written bytes as a little-endian integer."""
        return int.from_bytes(self.data[: self.length], "little")


@dataclass(frozen=True, slots=True)
class HltExit(Exit):
    """The guest executed ``hlt``."""


@dataclass(frozen=True, slots=True)
class ShutdownExit(Exit):
    """The vCPU shut down, normally a triple fault."""


@dataclass(frozen=True, slots=True)
class FailEntryExit(Exit):
    """KVM could not enter the guest; ``hardware_reason`` is the vendor-specific code."""

    hardware_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalErrorExit(Exit):
    """KVM itself failed, e.g. it could not emulate an instruction (suberror 1)."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InterruptedExit(Exit):
    """KVM_RUN returned because a signal arrived or ``immediate_exit`` was set."""


@dataclass(frozen=True, slots=True)
class UnknownExit(Exit):
    """An exit reason kvmpage does not model; ``reason`` holds the code."""


EXIT_NAMES: dict[int, str] = {
    getattr(abi, name): name for name in dir(abi) if name.startswith("KVM_EXIT_")
    and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
}  # fmt: skip


def exit_name(reason: int) -> str:
    """The ``KVM_EXIT_*`` name of an exit code, or ``"exit <code>"``."""
    return EXIT_NAMES.get(reason, f"exit {reason}")


def decode_exit(run: abi.kvm_run, run_address: int) -> Exit:
    """Decode the exit currently described by ``run`` (mapped at host address ``run_address``)."""
    reason = int(run.exit_reason)
    ex = run.exit
    if reason == abi.KVM_EXIT_MMIO:
        m = ex.mmio
        return MmioExit(reason, int(m.phys_addr), int(m.len), bool(m.is_write), bytes(m.data))
    if reason == abi.KVM_EXIT_IO:
        io = ex.io
        is_write = io.direction == abi.KVM_EXIT_IO_OUT
        n = int(io.size) * int(io.count)
        data = ctypes.string_at(run_address + int(io.data_offset), n) if is_write else b""
        return IoExit(reason, int(io.port), int(io.size), int(io.count), is_write, data)
    if reason == abi.KVM_EXIT_HLT:
        return HltExit(reason)
    if reason == abi.KVM_EXIT_SHUTDOWN:
        return ShutdownExit(reason)
    if reason == abi.KVM_EXIT_FAIL_ENTRY:
        f = ex.fail_entry
        return FailEntryExit(reason, int(f.hardware_entry_failure_reason), int(f.cpu))
    if reason == abi.KVM_EXIT_INTERNAL_ERROR:
        i = ex.internal
        n = min(int(i.ndata), 16)
        return InternalErrorExit(reason, int(i.suberror), tuple(int(x) for x in i.data[:n]))
    if reason == abi.KVM_EXIT_INTR:
        return InterruptedExit(reason)
    return UnknownExit(reason)
