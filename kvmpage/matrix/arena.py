"""Guest-physical memory of a matrix run: tagged data frames, and a pool of fresh table frames.

A *chunk* is up to ~500 combinations of one CPU state that share one address space: member m
gets its own PML4 slot and index m in the PDPT, PD and PT frames the chunk shares, so every
member has its own four entries and its own address (slot << 39 | m << 30 | m << 21 | m << 12),
and one KVM_RUN probes many chunks. Its leaf points at a data page of its own: 4 KiB frame m,
or the m-th 4 KiB of a 2 MiB (or 1 GiB) frame, each holding the frame's tag at +0 (a read must
return it), a fetch stub returning the tag at +0x40, and zeroed write slots from +0x100.

Table frames are always fresh: on a shadow-paging host the guest never sees a host rewrite of a
table it has walked, so a chunk's tables are written once, before the guest first uses them,
and never again. When the pool runs out, `recycle` makes KVM drop every shadow table (a memslot
delete and re-add) before the frames are used again.
"""

from __future__ import annotations

from kvmpage.machine import Batch, Machine
from kvmpage.machine.protocol import fetch_stub
from kvmpage.verify.probes import tag

MIB = 1 << 20
GIB = 1 << 30
DATA4K_BASE = 2 * MIB  #: 512 data frames of 4 KiB
BIG2M_BASE = 4 * MIB  #: `BIG2M_COUNT` data frames of 2 MiB
BIG2M_COUNT = 4
POOL_BASE = 12 * MIB  #: table frames from here to the agent's memory
GB_BASE = GIB  #: one 1 GiB data frame, where the host has 1 GiB pages
MEMORY = 128 * MIB
MEMORY_GB = 2 * GIB + 64 * MIB
WRITE_BASE = 0x100  #: write slots start here in each data page
WRITE_SLOTS = 64  #: per half of the pipeline (`write_offset`)
PAGE = 4096


def memory_size(gbpages: bool) -> int:
    """Guest RAM a run needs (a 1 GiB data frame needs RAM above 1 GiB)."""
    return MEMORY_GB if gbpages else MEMORY


def write_offset(chunk: int, half: int) -> int:
    """Where in its page a write of the ``chunk``-th chunk of a batch goes; ``half`` (0 or 1)
    alternates with the batch, so a batch running in the guest never writes where the host
    is still checking and clearing the batch before it."""
    return WRITE_BASE + 8 * (chunk % WRITE_SLOTS + WRITE_SLOTS * half)


class Arena:
    """The memory plan of one machine (see the module docstring)."""

    def __init__(self, machine: Machine, gbpages: bool) -> None:
        self.machine = machine
        self.gbpages = gbpages
        self.q = machine.memory._q
        self.pool_start = POOL_BASE
        self.pool_end = machine.reserved[0] & ~(PAGE - 1)
        if gbpages:
            self.pool_end = min(self.pool_end, GB_BASE)
        if self.pool_end - self.pool_start < 64 * PAGE:
            raise ValueError("guest memory too small for the matrix's table pool")
        self.next = self.pool_start
        self.recycled = 0
        self._fill()

    def _page(self, phys: int) -> None:
        self.q[phys >> 3] = tag(phys)
        self.machine.memory.write(phys + 0x40, fetch_stub(tag(phys)))

    def _fill(self) -> None:
        for m in range(512):
            self._page(DATA4K_BASE + m * PAGE)
        for f in range(BIG2M_COUNT):
            for m in range(512):
                self._page(BIG2M_BASE + f * 2 * MIB + m * PAGE)
        if self.gbpages:
            for m in range(512):
                self._page(self.leaf_page(3, m))

    def take(self, n: int) -> list[int] | None:
        """``n`` fresh (zeroed, never walked) table frames, or None when the pool is spent."""
        if self.next + n * PAGE > self.pool_end:
            return None
        frames = list(range(self.next, self.next + n * PAGE, PAGE))
        self.next += n * PAGE
        return frames

    def recycle(self) -> None:
        """Make every pool frame fresh again: KVM forgets all shadow tables, the host zeroes the
        frames used. Only between runs (no batch may be in the guest). CR3 goes back to the
        agent's own PML4 first: the last chunk's is one of the frames zeroed."""
        home = Batch()
        home.load_cr3(self.machine.agent_p4)
        self.machine.run(home)
        self.machine.drop_shadow_tables()
        self.machine.memory.zero(self.pool_start, self.next - self.pool_start)
        self.next = self.pool_start
        self.recycled += 1

    def leaf_address(self, level: int, m: int) -> int:
        """What member ``m``'s leaf entry at ``level`` points at."""
        if level == 1:
            return DATA4K_BASE + m * PAGE
        if level == 2:
            return BIG2M_BASE + (m % BIG2M_COUNT) * 2 * MIB
        return GB_BASE if self.gbpages else 0

    def leaf_page(self, level: int, m: int) -> int:
        """The 4 KiB data page member ``m`` reaches through a leaf at ``level`` (the address's
        bits below the page size are m << 21 | m << 12); 0 for a 1 GiB leaf on a host without
        1 GiB pages (there PS in a PDPTE is a reserved bit: nothing is reached)."""
        if level == 1:
            return DATA4K_BASE + m * PAGE
        if level == 2:
            return BIG2M_BASE + (m % BIG2M_COUNT) * 2 * MIB + (m << 12)
        return GB_BASE + (m << 21) + (m << 12) if self.gbpages else 0
