"""Table edits made after the guest has walked the tables, replayed by the agent.

Why: on a shadow-paging host (PVM here) a host-side write to a table the guest already used is
never seen by the guest, even after ``invlpg``. A kernel does not have this problem because it
writes its tables itself; `replay_through_agent` makes the machine do the same (it works on
every host). `kvmpage.verify.session.Session` uses it before every run, followed by the flushes
the mapper asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvmpage.machine.protocol import Batch
from kvmpage.memory import PhysMemory

_PAGE = 4096


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
