"""`ProbeMachine`: what the verifier needs of a machine, so that more than one oracle can serve it.

`kvmpage.machine.Machine` (KVM) and `kvmpage.tcg.TcgMachine` (QEMU's TCG through Unicorn) both
satisfy it: a physical memory the mapper writes into, the agent's reserved slot and memory, a
`run` of a `Batch`, the oracle labels, and whether the machine has a TLB a missing flush can
show (``models_tlb``; TCG does not model one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvmpage.kvm.host import HostProfile
    from kvmpage.machine.protocol import Batch, BatchResults
    from kvmpage.memory import PhysMemory


class ProbeMachine(Protocol):
    """A guest that runs batches of probes and services (see `kvmpage.machine.Machine`)."""

    #: what a read of a guest-physical address with no RAM returns (the verifier sets it)
    mmio_read_value: Callable[[int], int]

    @property
    def memory(self) -> PhysMemory: ...

    @property
    def agent_slot(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def reserved(self) -> tuple[int, int]: ...

    @property
    def cpl0_oracle(self) -> str: ...

    @property
    def translate_oracle(self) -> str | None:
        """The label of `translate`'s answers, or None when the machine has no second walker."""
        ...

    @property
    def models_tlb(self) -> bool:
        """Whether a stale TLB entry can show (False: every access walks the current tables)."""
        ...

    def install_agent_slot(self, p4_phys: int) -> None: ...

    def run(self, batch: Batch) -> BatchResults: ...

    def translate(self, va: int) -> int | None: ...

    def host_profile(self) -> HostProfile: ...


def open_bus_value(gpa: int) -> int:
    """All-ones: what a read of an address nothing answers returns on a PC (the default of
    `ProbeMachine.mmio_read_value`)."""
    return (1 << 64) - 1
