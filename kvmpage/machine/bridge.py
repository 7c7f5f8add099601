"""Glue between a software mapper and the machine: flushes become services, and table edits made
after the guest has walked the tables are replayed by the agent.

Why: on a shadow-paging host (PVM here) a host-side write to a table the guest already used is
never seen by the guest, even after ``invlpg``. A kernel does not have this problem because it
writes its tables itself; `agent_writes` makes the machine do the same. It works on every host.

    tlb = BatchTlb(cr3=p4)
    mapper = OffsetPageTable(PageTable(memory, p4), VirtAddr(0), tlb=tlb)
    ... map, then run a first batch ...
    batch = tlb.batch = Batch()
    with agent_writes(memory, batch, table_frames):
        mapper.update_flags(page, flags).flush()    # the invlpg lands after the agent's write
    machine.run(batch)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import SupportsInt

from kvmpage.machine.protocol import Batch
from kvmpage.memory import PhysMemory

_PAGE = 4096


class BatchTlb:
    """A `kvmpage.paging` ``Tlb`` that appends the mapper's flushes to ``batch`` as services.

    ``invlpg`` becomes `Batch.invlpg`; ``flush_all`` reloads ``cr3`` (`Batch.load_cr3`). Point
    ``batch`` at a fresh `Batch` before each run.
    """

    def __init__(self, cr3: int, batch: Batch | None = None) -> None:
        self.cr3 = cr3
        self.batch = batch if batch is not None else Batch()

    def invlpg(self, addr: SupportsInt) -> None:
        self.batch.invlpg(int(addr))

    def flush_all(self) -> None:
        self.batch.load_cr3(self.cr3)


@contextmanager
def agent_writes(memory: PhysMemory, batch: Batch, tables: Iterable[int]) -> Iterator[None]:
    """Turn host writes to the 4 KiB frames ``tables`` inside the block into agent writes.

    On exit every u64 that changed in those frames is put back to its old value in memory and a
    `Batch.write_entry` with the new value is appended, *before* any command (typically the
    mapper's flushes) appended to ``batch`` during the block. Frames not listed (for example
    tables the mapper allocated in the block) keep their host writes: the guest has never
    walked them, so it will see them.
    """
    frames = sorted({int(t) & ~(_PAGE - 1) for t in tables})
    before = {f: memory.read(f, _PAGE) for f in frames}
    mark = len(batch)
    yield
    after_block = batch._take_from(mark)
    replay_through_agent(memory, batch, before)
    batch._extend(after_block)


def replay_through_agent(
    memory: PhysMemory, batch: Batch, seen: Mapping[int, bytes]
) -> list[tuple[int, int]]:
    """Have the agent write every u64 that changed since the guest saw the frames ``seen``.

    ``seen`` maps a 4 KiB frame to its bytes as the guest last saw them. Each changed u64 is
    put back to its old value in memory and a `Batch.write_entry` with the new value is
    appended. Returns the ``(address, new value)`` pairs, in order.
    """
    written: list[tuple[int, int]] = []
    for frame, old in seen.items():
        new = memory.read(frame, _PAGE)
        if old == new:
            continue
        old_words = memoryview(old).cast("Q")
        new_words = memoryview(new).cast("Q")
        for i in range(_PAGE // 8):
            if old_words[i] != new_words[i]:
                memory.write_u64(frame + 8 * i, old_words[i])
                batch.write_entry(frame + 8 * i, new_words[i])
                written.append((frame + 8 * i, new_words[i]))
    return written
