"""A ready 64-bit KVM guest with the kvmpage agent, and the batched probe/service protocol.

Entry points: `Machine` (bring-up, `install_agent_slot`, `run`), `Batch` (probes and services),
`fetch_stub` (what a fetch target must hold), `host_profile` (features tried in a guest).
"""

from kvmpage.machine.errors import (
    AgentSlotConflict,
    BatchError,
    GuestCrashError,
    MachineClosedError,
    MachineError,
    WatchdogTimeout,
)
from kvmpage.machine.interface import ProbeMachine
from kvmpage.machine.machine import Machine, host_profile
from kvmpage.machine.protocol import Batch, BatchResults, Fault, Op, Result, fetch_stub

__all__ = [
    "AgentSlotConflict",
    "Batch",
    "BatchError",
    "BatchResults",
    "Fault",
    "GuestCrashError",
    "Machine",
    "MachineClosedError",
    "MachineError",
    "Op",
    "ProbeMachine",
    "Result",
    "WatchdogTimeout",
    "fetch_stub",
    "host_profile",
]
