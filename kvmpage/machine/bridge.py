"""Glue between a software mapper and the machine: flushes become services, and table edits made
after the guest has walked the tables are replayed by the agent.

Why: on a shadow-paging host (PVM here) a host-side write to a table the guest already used is
never seen by the guest, even after ``invlpg``. A kernel does not have this problem because it
writes its tables itself; `agent_writes` makes the machine do the same. It works on every host.

    tlb = BatchTlb(cr3=p4)
    mapper = OffsetPageTable(memory.table(p4), VirtAddr(0), tlb=tlb)
    ... map, then run a first batch ...
    batch = tlb.batch = Batch()
    with agent_writes(memory, batch, table_frames):
        mapper.update_flags(page, flags).flush()    # the invlpg lands after the agent's write
    machine.run(batch)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    for frame in frames:
        old, new = before[frame], memory.read(frame, _PAGE)
        if old == new:
            continue
        for off in range(0, _PAGE, 8):
            if old[off : off + 8] != new[off : off + 8]:
                memory.write(frame + off, old[off : off + 8])
                batch.write_entry(frame + off, int.from_bytes(new[off : off + 8], "little"))
    batch._extend(after_block)
