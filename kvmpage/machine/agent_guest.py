"""`AgentGuest`: what every machine that hosts the kvmpage agent does alike, whatever runs it.

KVM's `kvmpage.machine.Machine` and the tcg oracle's `kvmpage.tcg.TcgMachine` lay out guest
memory the same way (`kvmpage.machine.agent.Placement`) and take the same batches, so they
check them by the same rules: a user root must map the agent in its reserved top-level slot
before CR3 points at it (else the guest loses its own code: a triple fault on KVM), no probe may
address that slot, and physical targets stay below the agent's memory. One place for those
rules keeps the two oracles' refusals identical.
"""

from __future__ import annotations

from kvmpage.machine import layout as L
from kvmpage.machine.agent import Placement
from kvmpage.machine.errors import AgentSlotConflict, BatchError
from kvmpage.machine.protocol import RECORD_SIZE, Batch
from kvmpage.memory import PhysMemory
from kvmpage.x86 import ADDRESS_MASK

__all__ = ["AgentGuest"]

_END_RECORD = bytes(RECORD_SIZE)  # a zero record ends the agent's command loop


class AgentGuest:
    """The agent's reserved slot and memory, and the checks of a batch before it runs.

    Subclasses set ``placement`` and ``memory`` and may override `agent_slot`, `agent_p4`,
    `agent_slot_entry` and `batch_slots` (a 5-level guest keeps another slot of another root).
    """

    placement: Placement
    memory: PhysMemory

    @property
    def agent_slot(self) -> int:
        """The top-level slot of a user root that the agent reserves."""
        return self.placement.slot

    @property
    def capacity(self) -> int:
        """Commands one batch may hold."""
        return self.placement.capacity

    @property
    def reserved(self) -> tuple[int, int]:
        """Physical range the agent owns; user frames must be below ``reserved[0]``."""
        return self.placement.reserved

    @property
    def agent_p4(self) -> int:
        """Physical address of the agent's own root table (the boot CR3)."""
        return self.placement.p4_phys

    @property
    def agent_slot_entry(self) -> int:
        """The root entry that maps the agent."""
        return self.placement.slot_entry

    def batch_slots(self, batch: Batch) -> set[int]:
        """The top-level slots ``batch``'s probes address."""
        return batch.slots

    def install_agent_slot(self, p4_phys: int) -> None:
        """Make the user root at ``p4_phys`` map the agent (do it before the guest uses it).

        Raises `AgentSlotConflict` if that table already uses the agent's slot for something else.
        """
        self._check_frame(p4_phys, "the top-level table")
        at = p4_phys + 8 * self.agent_slot
        current = self.memory.read_u64(at)
        if current not in (0, self.agent_slot_entry):
            raise AgentSlotConflict(
                f"the top-level table at {p4_phys:#x} uses slot {self.agent_slot} (entry "
                f"{current:#x}), which the kvmpage agent reserves; keep user mappings out of "
                f"{L.slot_base(self.agent_slot):#x}..+512 GiB or choose another agent_slot"
            )
        self.memory.write_u64(at, self.agent_slot_entry)

    def _check_frame(self, phys: int, what: str) -> None:
        if phys % L.PAGE or not 0 <= phys < self.reserved[0]:
            raise BatchError(
                f"{what} at {phys:#x} must be a 4 KiB aligned frame below the agent's "
                f"reserved memory at {self.reserved[0]:#x}"
            )

    def _load(self, batch: Batch) -> tuple[int, int]:
        """Check ``batch`` (capacity, `_validate`) and write it into the command array with the
        end record after it, before any of it runs; returns (the array's address, commands)."""
        n = len(batch)
        if n > self.capacity:
            raise BatchError(
                f"batch of {n} commands exceeds this machine's capacity {self.capacity}"
            )
        self._validate(batch)
        start = self.placement.cmd_phys
        self.memory.write(start, batch.data)
        self.memory.write(start + n * RECORD_SIZE, _END_RECORD)
        return start, n

    def _validate(self, batch: Batch) -> None:
        """Refuse a batch the guest cannot run as written (before any of it runs)."""
        if self.agent_slot in self.batch_slots(batch):
            raise AgentSlotConflict(
                f"the batch addresses top-level slot {self.agent_slot}, which the agent reserves"
            )
        for cr3 in batch.cr3_loads:
            root = cr3 & ADDRESS_MASK
            if root != self.agent_p4:
                self._check_frame(root, "the CR3 target")
                if self.memory.read_u64(root + 8 * self.agent_slot) != self.agent_slot_entry:
                    raise BatchError(
                        f"CR3 {cr3:#x}: that table does not map the agent (the guest would "
                        f"lose its own code); call machine.install_agent_slot({root:#x}) first"
                    )
        for phys in batch.phys_targets:
            if phys % 8 or not 0 <= phys < self.reserved[0]:
                raise BatchError(
                    f"physical address {phys:#x} must be 8-byte aligned and below the agent's "
                    f"reserved memory at {self.reserved[0]:#x}"
                )
