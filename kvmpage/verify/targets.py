"""Where a probe may go and what it must read there: the one rule of both probe paths.

A probe whose predicted physical address is RAM below the agent reads the tag kvmpage wrote
there (`kvmpage.verify.probes.tag`). One beyond RAM reaches no memory: the CPU exits to the host
with the guest-physical address, and the exit is answered with that address's tag, so the value
still proves the address reached. What is never run: a probe that would reach the agent's own
memory or a page table (a write there would corrupt what is being checked), a fetch from
memory that is not RAM (an MMIO exit cannot be answered with code), a CPL0 fetch from the local
APIC page (this host's instruction emulator sends it to MMIO even where there is RAM), and a
CPL3 probe in a top-level slot the host keeps for itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmpage.memory import PhysMemory
from kvmpage.paging.access import AccessKind
from kvmpage.verify.probes import TAG_PREFIX

AGENT = "reaches the agent's own memory"
TABLE = "reaches a page-table frame"
BLOCKED = "CPL3 access in a PML4 slot this host keeps for itself"
NOT_RAM_FETCH = "fetch from guest-physical memory that is not RAM"
APIC_FETCH = (
    "CPL0 fetch from the local APIC page (this host's instruction emulator sends it to MMIO "
    "even where there is RAM)"
)
#: The local APIC's page (see `APIC_FETCH`).
APIC_PAGE = 0xFEE0_0000
_FETCH = AccessKind.FETCH


@dataclass(frozen=True)
class Targets:
    """What tagging needs to know of guest memory."""

    memory: PhysMemory  #: guest memory (``size``: where its RAM ends)
    reserved_start: int  #: the agent's memory starts here
    protected: set[int]  #: page-table frames: never tagged
    blocked: frozenset[int] = frozenset()  #: top-level slots CPL3 probes cannot use here

    @property
    def size(self) -> int:
        return self.memory.size

    def blocked_slot(self, va: int, cpl: int) -> bool:
        """Whether a probe at ``va`` and ``cpl`` falls in a slot the host keeps for itself."""
        return bool(self.blocked) and cpl == 3 and (va >> 39) & 511 in self.blocked

    def skip(self, phys: int, access: AccessKind, cpl: int) -> str | None:
        """Why a probe that reaches ``phys`` must not run, or None when it may."""
        if access is _FETCH:
            if not self.memory.contains(phys, 16):
                return NOT_RAM_FETCH
            if cpl == 0 and phys >> 12 == APIC_PAGE >> 12:
                return APIC_FETCH
        if phys >= self.memory.size:
            return None
        if phys >= self.reserved_start:
            return AGENT
        if phys & ~0xFFF in self.protected:
            return TABLE
        return None

    def tagged(self, phys: int) -> bool:
        """Whether the probe's value is a tag written in memory (else an MMIO exit answers)."""
        return phys < self.memory.size

    def all_taggable(self, phys: list[int]) -> bool:
        """Whether every frame of ``phys`` may be read and holds a written tag (the fast path
        of a table whose pages all predict the same outcome)."""
        return max(phys) < self.reserved_start and self.protected.isdisjoint(phys)


def tag_value(phys: int) -> int:
    """The tag a read of ``phys`` returns (the address's name, prefixed)."""
    return TAG_PREFIX | phys
