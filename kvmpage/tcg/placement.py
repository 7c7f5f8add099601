"""Where a `TcgMachine` puts its agent and how its guest-physical space is mapped in Unicorn.

Two things the KVM machine does not need:

- Under 5-level paging (CR4.LA57) the agent's pages hang off an entry of its own level-5 root.
  `Placement57` is the KVM placement with that entry's index (``top``) in the virtual
  addresses: ``top`` can be any level-5 slot, so a memory image whose kernel uses slot 511 (a
  5-level Linux: its text, modules and fixmap) still has room for the agent in a free slot.
- A guest laid out like a memory image has holes in its RAM (`map_guest_memory`): every range
  of ``memory.present()`` is RAM (Unicorn's view of the same host memory, zero-copy), every hole
  between them and everything above is MMIO, answered by the machine's callbacks, as KVM exits
  to the host for an address no memslot covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmpage._addr_base import canonicalize
from kvmpage.kvm.memory import GuestMemory
from kvmpage.machine import agent
from kvmpage.tcg.engine import Engine


@dataclass(frozen=True, slots=True)
class Placement57(agent.Placement):
    """`agent.Placement` for a 5-level guest: the agent's own level-4 table sits in entry
    ``top`` of its level-5 root, and its slot ``slot`` of that level-4 table, so the agent's
    virtual addresses are those of level-5 slot ``top`` (the 4-level placement's are those of
    slot 511 or 0, by the sign of ``slot``)."""

    top: int = 511

    @property
    def base(self) -> int:
        """Virtual address of the agent's 512 GiB: level-5 slot ``top``, level-4 slot ``slot``."""
        if not 0 <= self.top < 512:
            raise ValueError(f"level-5 slot must be in 0..511, got {self.top}")
        return canonicalize(self.top << 48 | self.slot << 39, 5)


def map_guest_memory(
    engine: Engine,
    memory: GuestMemory,
    limit: int,
    read: Callable[[int, int], int],
    write: Callable[[int, int, int], None],
) -> None:
    """Map ``memory``'s present ranges as RAM and everything else below ``limit`` as MMIO
    (``read(gpa, size)``, ``write(gpa, size, value)``)."""
    at = 0
    for start, end in memory.present():
        if start > at:
            engine.map_mmio(at, start - at, read, write)
        engine.map_ram(start, end - start, memory.host_address + start)
        at = end
    if at < limit:
        engine.map_mmio(at, limit - at, read, write)
