"""A ready 64-bit KVM guest with the kvmpage agent, and the batched probe/service protocol.

Entry points: `Machine` (bring-up, `install_agent_slot`, `run`), `Batch` (probes and services),
`fetch_stub` (what a fetch target must hold), `host_profile` (features tried in a guest, a
`HostProfile`), `agent_reserved` and `memory_limit` (what a layout must leave to the agent and
may use). The layers above reach KVM only through this package: `KvmError` (an ioctl or
/dev/kvm failed, with its errno) is re-exported from the binding layer `kvmpage.kvm`.
"""

from kvmpage.kvm.errors import KvmError
from kvmpage.kvm.host import HostProfile
from kvmpage.machine.errors import (
    AgentSlotConflict,
    BatchError,
    GuestCrashError,
    MachineClosedError,
    MachineError,
    WatchdogTimeout,
)
from kvmpage.machine.interface import ProbeMachine
from kvmpage.machine.layout import DEFAULT_AGENT_SLOT
from kvmpage.machine.machine import Machine, agent_reserved, host_profile, memory_limit
from kvmpage.machine.protocol import Batch, BatchResults, Fault, Op, Result, fetch_stub

__all__ = [
    "DEFAULT_AGENT_SLOT",
    "AgentSlotConflict",
    "Batch",
    "BatchError",
    "BatchResults",
    "Fault",
    "GuestCrashError",
    "HostProfile",
    "KvmError",
    "Machine",
    "MachineClosedError",
    "MachineError",
    "Op",
    "ProbeMachine",
    "Result",
    "WatchdogTimeout",
    "agent_reserved",
    "fetch_stub",
    "host_profile",
    "memory_limit",
]
