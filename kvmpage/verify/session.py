"""Keeping a machine in step with a mapper: the live-update rule and the TLB.

On a shadow-paging host the guest never sees a host-side rewrite of a table it has already
walked (see docs/kvm.md). So a `Session` remembers the bytes of every table frame as the guest
last saw them; before the next run it puts those bytes back and has the agent write each changed
entry at CPL0, as a kernel would, followed by exactly the flushes the mapper's tokens asked for
(`MachineTlb`). New tables the guest never walked are written by the host directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol, runtime_checkable

from kvmpage.addr import AnyVirtAddr
from kvmpage.machine import Batch, BatchResults, ProbeMachine
from kvmpage.machine.bridge import replay_through_agent
from kvmpage.machine.protocol import Result
from kvmpage.machine.watchdog import install_signal_handler
from kvmpage.paging.access import AccessKind, CpuState
from kvmpage.paging.leaves import table_frames
from kvmpage.verify.probes import Probe, tag
from kvmpage.verify.tlb import Unflushed

#: bulk reads per KVM_RUN when a run is pipelined (`Session.run` with ``pipelined``)
PIPELINE_READS = 32768


@runtime_checkable
class ReadSource(Protocol):
    """Addresses for the CPL3 reads of a `Session.run`, handed out batch by batch."""

    def take(self, limit: int) -> Sequence[int]:
        """Up to ``limit`` more addresses, their memory ready to be read; fewer only when no
        more remain."""
        ...


class _Listed:
    """A sequence of addresses as a `ReadSource`."""

    def __init__(self, addresses: Sequence[int]) -> None:
        self._addresses = addresses
        self._next = 0

    def take(self, limit: int) -> Sequence[int]:
        out = self._addresses[self._next : self._next + limit]
        self._next += len(out)
        return out


class MachineTlb:
    """A mapper's `Tlb` on a machine: flushes are queued and run by the agent before the next
    probes (``invlpg`` for `MapperFlush`, a CR3 reload for `MapperFlushAll`)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, int]] = []
        #: every flush ever requested, in order (for reports and tests)
        self.log: list[tuple[str, int]] = []

    def invlpg(self, addr: AnyVirtAddr) -> None:
        self.pending.append(("invlpg", addr.as_u64()))
        self.log.append(("invlpg", addr.as_u64()))

    def flush_all(self) -> None:
        self.pending.append(("flush_all", 0))
        self.log.append(("flush_all", 0))


class Session:
    """One address space (the top-level table at ``p4_phys``, a PML4, or a PML5 when
    ``levels`` is 5) running on ``machine``."""

    def __init__(
        self,
        machine: ProbeMachine,
        p4_phys: int,
        *,
        skip_p4: frozenset[int] = frozenset(),
        levels: int = 4,
    ) -> None:
        self.machine = machine
        self.memory = machine.memory
        self.p4_phys = p4_phys
        self.levels = levels
        self.skip_p4 = skip_p4 | {machine.agent_slot}
        self.tlb = MachineTlb()
        machine.install_agent_slot(p4_phys)
        self._walked: dict[int, bytes] = {}
        self._cpu: CpuState | None = None
        self._cr3_loaded = False
        #: entries the agent wrote in the last prologue: (physical address, value)
        self.last_replayed: list[tuple[int, int]] = []
        #: flushes the agent executed in the last prologue
        self.last_flushes: list[tuple[str, int]] = []

    def walked_frames(self) -> set[int]:
        """Frames the guest has used as page tables (their writes go through the agent)."""
        return set(self._walked)

    def unflushed(self) -> Unflushed:
        """The entries changed since the guest last walked the tables and the flushes queued
        since, before the next run applies them (for oracles without a TLB model)."""
        new = {
            frame: self.memory.table_words(frame)
            for frame, old in self._walked.items()
            if self.memory.read(frame, 4096) != old
        }
        return Unflushed.between(self._walked, new, self.tlb.pending)

    def _services(self, cpu: CpuState) -> list[Callable[[Batch], int]]:
        """What must run before the probes, in order: the table changes replayed through the
        agent, the first CR3 load, the queued flushes, the CPU state."""
        scratch = Batch()
        self.last_replayed = replay_through_agent(self.memory, scratch, self._walked)
        services: list[Callable[[Batch], int]] = [
            functools.partial(Batch.write_entry, phys_addr=addr, value=value)
            for addr, value in self.last_replayed
        ]
        load_cr3 = functools.partial(Batch.load_cr3, cr3=self.p4_phys)
        if not self._cr3_loaded:
            services.append(load_cr3)
            self._cr3_loaded = True
        self.last_flushes = list(self.tlb.pending)
        for kind, va in self.tlb.pending:
            services.append(
                functools.partial(Batch.invlpg, addr=va) if kind == "invlpg" else load_cr3
            )
        self.tlb.pending.clear()
        if cpu != self._cpu:
            services += [
                functools.partial(Batch.set_wp, on=cpu.wp),
                functools.partial(Batch.set_smep, on=cpu.smep),
                functools.partial(Batch.set_smap, on=cpu.smap),
                functools.partial(Batch.set_ac, on=cpu.ac),
                functools.partial(Batch.set_nxe, on=cpu.nxe),
            ]
            self._cpu = cpu
        return services

    def run(
        self,
        probes: Sequence[Probe],
        cpu: CpuState,
        bulk_reads: Sequence[int] | ReadSource = (),
        *,
        pipelined: bool = False,
        reads_per_run: int | None = None,
    ) -> RunResults:
        """Run the pending services, then ``probes``, then a CPL3 read at each address of
        ``bulk_reads``, in as few KVM_RUNs as the machine's capacity allows (services first, in
        order; a long replay spans several runs). Results come in that order.

        ``bulk_reads`` may be a `ReadSource`, asked for its addresses batch by batch. With
        ``pipelined``, the reads go in runs of at most ``reads_per_run`` (default
        `PIPELINE_READS`; the first runs are smaller, so the pipeline fills fast) and each run
        executes in a worker thread while the next batch is made: the source's work for it
        (predicting, tagging fresh memory) overlaps the guest's work on this one.
        """
        source = bulk_reads if isinstance(bulk_reads, ReadSource) else _Listed(bulk_reads)
        per_run = (reads_per_run or PIPELINE_READS) if pipelined else None
        batches = self._batches(probes, cpu, source, per_run)
        results = RunResults()
        try:
            if not pipelined:
                for batch, services in batches:
                    self._add(results, self._run_one(batch), services)
                return results
            install_signal_handler()  # (the watchdog's, from this thread: the main one)
            with ThreadPoolExecutor(1, thread_name_prefix="kvmpage-run") as worker:
                running: tuple[Future[BatchResults], int] | None = None
                try:
                    for batch, services in batches:  # (made while the previous batch runs)
                        if running is not None:
                            self._add(results, running[0].result(), running[1])
                        running = worker.submit(self._run_one, batch), services
                    if running is not None:
                        self._add(results, running[0].result(), running[1])
                        running = None
                finally:
                    if running is not None:  # an error making a batch: let the run finish
                        wait([running[0]])
            return results
        finally:
            self._snapshot()

    def _batches(
        self,
        probes: Sequence[Probe],
        cpu: CpuState,
        source: ReadSource,
        reads_per_run: int | None,
    ) -> Iterator[tuple[Batch, int]]:
        """The batches of a run, made as they are needed: ``(batch, services in it)``."""
        services = self._services(cpu)
        capacity = self.machine.capacity
        done_services = done_probes = done_bulk = 0
        exhausted = False
        first_batch = True
        while True:
            batch = Batch()
            for service in services[done_services : done_services + capacity]:
                service(batch)
            first = len(batch)
            done_services += first
            chunk: Sequence[Probe] = ()
            if done_services == len(services):
                chunk = probes[done_probes : done_probes + capacity - first]
                _encode(batch, chunk)
                if done_probes + len(chunk) >= len(probes):
                    room = capacity - len(batch)
                    if reads_per_run is not None:  # small first runs: the pipeline fills fast
                        room = min(room, reads_per_run, max(4096, 2 * done_bulk))
                    reads = source.take(room) if room else []
                    exhausted = len(reads) < room
                    if reads:
                        batch.reads(reads)
                    done_bulk += len(reads)
            done_probes += len(chunk)
            if len(batch) or first_batch:  # (an empty batch only when there is nothing)
                yield batch, first
            first_batch = False
            if done_services == len(services) and done_probes >= len(probes) and exhausted:
                return

    def _run_one(self, batch: Batch) -> BatchResults:
        try:
            return self.machine.run(batch)
        except BaseException:
            # a crash or the watchdog puts the vCPU back in its boot state (agent CR3,
            # default control registers): load ours again on the next run
            self._cr3_loaded = False
            self._cpu = None
            raise

    def _add(self, results: RunResults, out: BatchResults, services: int) -> None:
        self._check_services(out, services)
        results.add(out, services)

    def _check_services(self, out: BatchResults, count: int) -> None:
        for r in out[:count]:
            if not r.ok:
                raise RuntimeError(f"the agent could not apply a table update or flush: {r}")

    def _snapshot(self) -> None:
        frames = table_frames(self.memory, self.p4_phys, skip_p4=self.skip_p4, levels=self.levels)
        for frame in frames:
            self._walked[frame] = self.memory.read(frame, 4096)
        for frame in list(self._walked):
            self._walked[frame] = self.memory.read(frame, 4096)

    def sync(self, cpu: CpuState = CpuState()) -> None:  # noqa: B008 (frozen)
        """Apply pending table changes and flushes now, without probing."""
        self.run([], cpu)


class RunResults:
    """The probes' results of one `Session.run`, in probe order, possibly over several batches.

    Records are decoded on demand: `records` gives raw tuples (see `BatchResults.raw`) for a
    range, `column` one field of every record (for comparing a large run column-wise), and
    `result` the full `Result` of one probe when an explanation is needed.
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[int, BatchResults, int]] = []  # (first probe, batch, skip)
        self._n = 0
        self._columns: dict[int, list[int]] = {}

    def add(self, out: BatchResults, skip: int) -> None:
        self._chunks.append((self._n, out, skip))
        self._n += len(out) - skip
        self._columns.clear()

    def records(self, start: int = 0, stop: int | None = None) -> list[tuple[int, ...]]:
        """Raw record tuples of probes ``start`` to ``stop``."""
        stop = self._n if stop is None else min(stop, self._n)
        out: list[tuple[int, ...]] = []
        for first, batch, skip in self._chunks:
            end = first + len(batch) - skip
            if end <= start or first >= stop:
                continue
            lo, hi = max(start, first) - first + skip, min(stop, end) - first + skip
            out += batch.raw(lo, hi)
        return out

    def column(self, offset: int) -> list[int]:
        """Field ``offset`` (a `kvmpage.machine.protocol` ``R_*`` constant) of every probe's
        record, in probe order."""
        col = self._columns.get(offset)
        if col is None:
            col = []
            for _, batch, skip in self._chunks:
                col += batch.column(offset)[skip:]
            self._columns[offset] = col
        return col

    def result(self, index: int) -> Result:
        for first, out, skip in reversed(self._chunks):
            if index >= first:
                return out.result(index - first + skip)
        raise IndexError(index)

    def __len__(self) -> int:
        return self._n


def _encode(batch: Batch, probes: Sequence[Probe]) -> None:
    """Append the probes to ``batch``; runs of CPL3 reads go in through the bulk path."""
    reads: list[int] = []
    for p in probes:
        if p.access is AccessKind.READ and p.cpl == 3:
            reads.append(p.va)
            continue
        if reads:
            batch.reads(reads)
            reads = []
        if p.access is AccessKind.READ:
            batch.read(p.va, p.cpl)
        elif p.access is AccessKind.WRITE:
            batch.write(p.va, _write_value(p), p.cpl)
        else:
            batch.fetch(p.va, p.cpl)
    if reads:
        batch.reads(reads)


def _write_value(probe: Probe) -> int:
    """A write probe stores the tag that is already there: memory is left as it was."""
    if probe.leaf is None:
        return 0
    span = probe.leaf.size
    return tag((probe.leaf.phys & ~(span - 1)) | (probe.va & (span - 1)))
