"""Running combinations on a machine: chunks of fresh tables, batches, and the checks.

`Runner.run` takes a stream of rows grouped by CPU state. Rows of one CPU state go into chunks
(`kvmpage.matrix.arena`: ~500 combinations sharing one fresh address space, each with its own
address and its own four entries); a batch holds several chunks, the services that set the CPU
state where it changes, a CR3 load per chunk and each member's probes (CPL3 ones first, so the
ring-3 loop runs them without a ring switch; a ``twice`` member's priming read right before its
access). While the guest runs one batch, the host builds the next and checks the previous one:
per probe the outcome, the exact error code, CR2 and the frame reached (the tag read, or the
value written where the leaf says), per entry of the walk the A and D bits and every other bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kvmpage.machine import Batch, BatchResults, Machine
from kvmpage.machine.protocol import (
    OP_CPL3,
    R_CR2,
    R_ERROR,
    R_STATUS,
    R_VALUE,
    R_VECTOR,
    ST_OK,
    Op,
)
from kvmpage.machine.pte import canonical
from kvmpage.machine.watchdog import install_signal_handler
from kvmpage.matrix import dims
from kvmpage.matrix.arena import Arena, write_offset
from kvmpage.matrix.check import WRITE_MARK, Checker
from kvmpage.matrix.dims import Row
from kvmpage.matrix.expect import (
    FETCH_OFFSET,
    EntryConfig,
    Expectations,
    Expected,
    Model,
    entry_config,
)
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.matrix.report import DEFAULT_LIMIT, Totals

CHUNKS_PER_BATCH = 8
_OPS = (int(Op.READ), int(Op.WRITE), int(Op.FETCH))


def capacity(slots: int) -> int:
    """Records a batch of `CHUNKS_PER_BATCH` chunks of ``slots`` members can need."""
    return CHUNKS_PER_BATCH * (2 * slots + 1 + 5) + 1


#: One member of a chunk: its row; (entry address, value written) of each entry, PML4E first;
#: the model's answer for the priming read (None without ``twice``) and for the access; the
#: index of the access's record among its CPL's records in the chunk; the data page it reaches.
Member = tuple[Row, tuple[tuple[int, int], ...], "Expected | None", Expected, int, int]


@dataclass
class Chunk:
    """One address space's members and what to check of each."""

    cpu: Row
    woff: int  #: where its writes go in their page (`write_offset`)
    write_base: int  #: member m writes WRITE_MARK | (write_base + m)
    members: list[Member] = field(default_factory=list)
    base3: int = 0  #: record index of its first CPL3 probe
    base0: int = 0  #: record index of its first CPL0 probe


@dataclass
class Prepared:
    """A batch ready to run, with its chunks; ``pool_spent``: the table pool ran out."""

    batch: Batch
    chunks: list[Chunk]
    services: list[int]  #: record indices of the services (they must all succeed)
    pool_spent: bool = False


_RECYCLE = Prepared(Batch(), [], [])


class Runner:
    """Runs matrix rows on ``machine`` and checks them against ``model`` (default: `evaluate`).

    ``progress`` is called after each checked batch with the totals so far."""

    def __init__(
        self,
        machine: Machine,
        host: HostFacts,
        *,
        model: Model | None = None,
        limit: int = DEFAULT_LIMIT,
        progress: Callable[[Totals], None] | None = None,
    ) -> None:
        self.machine = machine
        self.host = host
        self.arena = Arena(machine, host.gbpages_work)
        self.expect = Expectations(host, model)
        self.totals = Totals()
        self.progress = progress
        slots = [s for s in range(512) if s != machine.agent_slot and s not in host.blocked_slots]
        self.slots = slots
        #: per member m: its address, its PML4 entry's offset, and per leaf level the address
        #: its leaf entry holds and the data page it reaches
        self.vas = [canonical(s << 39) | m << 30 | m << 21 | m << 12 for m, s in enumerate(slots)]
        self.checker = Checker(self.arena, host, self.totals, limit, self.vas)
        self.p4_offsets = [8 * s for s in slots]
        self.leaf_addresses = {
            lv: [self.arena.leaf_address(lv, m) for m in range(len(slots))] for lv in (1, 2, 3)
        }
        self.leaf_pages = {0: [0] * len(slots)} | {
            lv: [self.arena.leaf_page(lv, m) for m in range(len(slots))] for lv in (1, 2, 3)
        }
        self.slot_entry = machine.agent_slot_entry
        self.agent_slot = machine.agent_slot
        if machine.capacity < capacity(len(slots)):
            raise ValueError(
                f"the machine's batch capacity {machine.capacity} is below the "
                f"{capacity(len(slots))} records a matrix batch needs"
            )
        self._cfgs: dict[Row, EntryConfig] = {}
        self._problems: dict[Row, str | None] = {}
        self._lookahead: list[Row] = []
        self._cpu: Row | None = None  # the CPU state the guest is in after the prepared batches
        self._half = 0
        self._writes = 0

    # -- the pipeline --------------------------------------------------------------------

    def run(self, rows: Iterable[Row]) -> Totals:
        """Check every row of ``rows`` (grouped by CPU state); returns the totals."""
        t0 = time.perf_counter()
        it = iter(rows)
        install_signal_handler()
        running: tuple[Future[BatchResults], Prepared] | None = None
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="kvmpage-matrix") as worker:
                while True:
                    t1 = time.thread_time()
                    prep = self._prepare(it)
                    self.totals.host_seconds += time.thread_time() - t1
                    if prep is _RECYCLE:
                        if running is not None:
                            self._check(running[1], running[0].result())
                            running = None
                        self.arena.recycle()
                        self.totals.recycles += 1
                        continue
                    out = running[0].result() if running is not None else None
                    nxt = (worker.submit(self._run_batch, prep.batch), prep) if prep else None
                    if running is not None and out is not None:
                        self._check(running[1], out)
                    running = nxt
                    if running is None:
                        break
        finally:
            self.totals.seconds += time.perf_counter() - t0
            self.totals.model_calls = self.expect.calls
        return self.totals

    def _run_batch(self, batch: Batch) -> BatchResults:
        """One KVM_RUN loop (in the worker thread); its time is the guest's share."""
        out = self.machine.run(batch)
        self.totals.guest_seconds += self.machine.last_run_ns / 1e9
        return out

    # -- building ------------------------------------------------------------------------

    def _next_rows(self, it: Iterator[Row]) -> list[Row]:
        """Up to one chunk of rows of one CPU state that this host can run."""
        out: list[Row] = []
        size = len(self.slots)
        problems = self._problems
        problem = self.host.problem
        skipped = self.totals.skipped
        start = dims.ENTRY_START
        nxe, smep, smap = dims.C_NXE, dims.C_SMEP, dims.C_SMAP
        while len(out) < size:
            if self._lookahead:
                row = self._lookahead.pop()
            else:
                nxt = next(it, None)
                if nxt is None:
                    break
                row = nxt
            if out and row[: dims.CPU_END] != out[0][: dims.CPU_END]:
                self._lookahead.append(row)
                break
            key = (row[nxe], row[smep], row[smap], *row[start:])
            why = problems.get(key, "?")
            if why == "?":
                why = problems[key] = problem(row)
            if why is not None:
                skipped[why] += 1
                continue
            out.append(row)
        return out

    def _prepare(self, it: Iterator[Row]) -> Prepared | None:
        batch = Batch()
        prep = Prepared(batch, [], [])
        while len(prep.chunks) < CHUNKS_PER_BATCH:
            rows = self._next_rows(it)
            if not rows:
                break
            frames = self.arena.take(4)
            if frames is None:
                self._lookahead.extend(reversed(rows))
                if not prep.chunks:
                    return _RECYCLE
                prep.pool_spent = True
                break
            cpu = rows[0][: dims.CPU_END]
            if cpu != self._cpu:
                self._set_cpu(batch, prep, cpu)
            prep.chunks.append(self._build(rows, frames, len(prep.chunks), batch))
        if not prep.chunks and not prep.services:
            return None
        self._half ^= 1
        return prep

    def _set_cpu(self, batch: Batch, prep: Prepared, cpu: Row) -> None:
        wp, nxe, smep, smap, ac = (bool(v) for v in cpu)
        prep.services += [
            batch.set_wp(wp),
            batch.set_smep(smep),
            batch.set_smap(smap),
            batch.set_ac(ac),
            batch.set_nxe(nxe),
        ]
        self._cpu = cpu
        self.expect.switch(cpu)
        self.checker.clear()

    def _build(self, rows: list[Row], frames: list[int], index: int, batch: Batch) -> Chunk:
        p4, t3, t2, t1 = frames
        q = self.arena.q
        q[(p4 >> 3) + self.agent_slot] = self.slot_entry
        cpu = rows[0][: dims.CPU_END]
        chunk = Chunk(cpu, woff=write_offset(index, self._half), write_base=self._writes)
        self._writes += len(rows)
        batch.load_cr3(p4)
        members = chunk.members
        ops3: list[int] = []
        addrs3: list[int] = []
        vals3: list[int] = []
        ops0: list[int] = []
        addrs0: list[int] = []
        vals0: list[int] = []
        get_cfg = self._cfgs.get
        get_exp = self.expect.get
        woff = chunk.woff
        start = dims.ENTRY_START
        vas, p4_offsets = self.vas, self.p4_offsets
        leaf_addresses, leaf_pages = self.leaf_addresses, self.leaf_pages
        for m, row in enumerate(rows):
            key = row[start:]
            cfg = get_cfg(key)
            if cfg is None:
                cfg = self._cfgs[key] = entry_config(row, self.host, len(self._cfgs))
            flags = cfg.flags
            n = len(flags)
            m8 = m << 3
            at = (p4 + p4_offsets[m], t3 + m8, t2 + m8, t1 + m8)
            targets = [t3, t2, t1, 0]
            if cfg.leaf:
                targets[n - 1] = leaf_addresses[cfg.leaf][m]
            written = tuple((at[k], flags[k] | targets[k]) for k in range(n))
            for a, v in written:
                q[a >> 3] = v
            cpl = 3 if row[dims.C_CPL] else 0
            access = row[dims.C_ACCESS]
            main = get_exp(cpl, access, cfg)
            first = get_exp(cpl, 0, cfg) if row[dims.C_TWICE] else None
            va = vas[m]
            if cpl == 3:
                ops, addrs, vals, code = ops3, addrs3, vals3, OP_CPL3
            else:
                ops, addrs, vals, code = ops0, addrs0, vals0, 0
            if first is not None:
                ops.append(int(Op.READ) | code)
                addrs.append(va)
                vals.append(0)
            ops.append(_OPS[access] | code)
            addrs.append(va + (0, woff, FETCH_OFFSET)[access])
            vals.append(WRITE_MARK | (chunk.write_base + m))
            members.append((row, written, first, main, len(ops) - 1, leaf_pages[cfg.leaf][m]))
        chunk.base3 = len(batch)
        chunk.base0 = chunk.base3 + len(ops3)
        batch.probes(ops3 + ops0, addrs3 + addrs0, vals3 + vals0)
        return chunk

    # -- checking ------------------------------------------------------------------------

    def _check(self, prep: Prepared, out: BatchResults) -> None:
        t0 = time.thread_time()
        statuses = out.column(R_STATUS)
        for i in prep.services:
            if statuses[i] != ST_OK:
                raise RuntimeError(f"the agent could not set the CPU state: {out[i]}")
        cols = (statuses, out.column(R_VECTOR), out.column(R_ERROR), out.column(R_CR2),
                out.column(R_VALUE))  # fmt: skip
        for chunk in prep.chunks:
            self.checker.chunk(chunk, cols)
        self.totals.runs += 1
        self.totals.host_seconds += time.thread_time() - t0
        if self.progress is not None:
            self.progress(self.totals)
