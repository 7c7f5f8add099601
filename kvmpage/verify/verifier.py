"""`Verifier`: one address space on one machine, verified as often as needed.

The mapper must write into the machine's memory (build it over ``machine.memory``, with tables
below ``machine.reserved[0]``); or, for tables already there (a memory image's), give their
root. A verification scans the tables (`kvmpage.paging.leaves`), plans the probes
(`kvmpage.verify.probes`), predicts each one and tags the frames it must reach
(`kvmpage.verify.predict`, `kvmpage.verify.targets`), runs them through the `Session` (which
first replays, as a kernel would, the table changes made since the last run, and exactly the
flushes the mapper's tokens asked for), and compares (`kvmpage.verify.checks`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from kvmpage.machine import ProbeMachine, fetch_stub
from kvmpage.machine.protocol import Result
from kvmpage.memory import PhysMemory
from kvmpage.paging.access import AccessKind, CpuState, Features
from kvmpage.paging.leaves import Leaves, table_frames
from kvmpage.paging.mapper import RecursivePageTable, TableMapper
from kvmpage.verify import bulk as bulk_path
from kvmpage.verify import checks
from kvmpage.verify.compare import Verdict, compare
from kvmpage.verify.explain import Explainer
from kvmpage.verify.predict import Expectation, Predictor
from kvmpage.verify.probes import (
    ACCESS_OFFSETS,
    FULL_SET,
    BulkGroup,
    Coverage,
    Plan,
    PlanOptions,
    Probe,
    make_plan,
    tag,
)
from kvmpage.verify.report import Report
from kvmpage.verify.session import Session
from kvmpage.verify.targets import BLOCKED, Targets
from kvmpage.verify.tlb import NOT_CHECKABLE, Unflushed

PredictorFactory = Callable[[PhysMemory, int, CpuState, Features], Predictor]
#: entries the CPU faults on (reserved bits) probed per run, at their first page
FAULTS_PROBED = 4096
#: disagreements per run explained with both walks (`Verifier`'s ``detail_limit``)
DETAIL_LIMIT = 1000
#: bulk reads above which tagging and probing run as a pipeline (see `Session.run`)
PIPELINE_MIN = 65536
_FEATURES_REPORTED = (
    "nx", "smep", "smap", "1gib-pages", "pcid", "pku", "la57", "cpl3-every-pml4-slot",
)  # fmt: skip


@dataclass(frozen=True)
class ProbeCheck:
    """One probe of `Verifier.probe`: the prediction, the CPU's result and the verdict (both
    None when the probe was not run; ``skipped`` then says why)."""

    probe: Probe
    expectation: Expectation
    value: int | None  #: the tag the probe should read (None: no value to check)
    result: Result | None
    verdict: Verdict | None
    skipped: str = ""


class Verifier:
    """One mapper's address space on one machine; call `verify` as often as needed."""

    def __init__(
        self,
        mapper: TableMapper | None,
        machine: ProbeMachine,
        *,
        root: int | None = None,
        skip_top: frozenset[int] = frozenset(),
        cpu: CpuState = CpuState(),  # noqa: B008 (frozen)
        predictor: PredictorFactory = Predictor,
        keep_results: bool = False,
        detail_limit: int = DETAIL_LIMIT,
    ) -> None:
        """``mapper``: the mapper whose tables to verify (it must write into ``machine.memory``);
        or None with ``root``, the physical address of tables already there (a memory image's).
        ``skip_top``: top-level slots not to probe besides the agent's (a recursive slot).
        ``keep_results``: keep every probe's outcome of the last run in `last_results`.
        ``detail_limit``: how many disagreements of a run are explained with both walks (each
        costs a KVM_TRANSLATE); the others keep their one-line reason, and every count stays
        exact, so a systematic error in a large layout is reported in seconds."""
        if mapper is not None and mapper.memory is not machine.memory:
            raise ValueError(
                "the mapper's tables must live in the machine's memory: build them over "
                "machine.memory, below machine.reserved[0]"
            )
        self.mapper = mapper
        self.machine = machine
        self.cpu = cpu
        self.profile = machine.host_profile()
        skip = {machine.agent_slot, *skip_top}
        if mapper is not None:
            if mapper.levels != cpu.levels:
                raise ValueError(
                    f"the mapper walks {mapper.levels} levels but the CPU state says "
                    f"{cpu.levels} (CpuState(la57=...) must match the mapper's levels)"
                )
            self.p4_phys = mapper.top_level_table().phys
            if isinstance(mapper, RecursivePageTable):
                skip.add(mapper.recursive_index)
        elif root is not None:
            self.p4_phys = root
        else:
            raise ValueError("a Verifier needs a mapper or the root of the tables (root=...)")
        self.skip_p4 = frozenset(skip)
        self.session = Session(machine, self.p4_phys, skip_p4=self.skip_p4, levels=cpu.levels)
        # a read that reaches no RAM is an MMIO exit: answered with the address's tag, it
        # proves the address the CPU reached like a tagged frame does
        machine.mmio_read_value = tag
        if mapper is not None:
            mapper.tlb = self.session.tlb
        self.features = Features(
            maxphyaddr=self.profile.maxphyaddr, gbpages=self.profile.supports("1gib-pages")
        )
        self._predictor_factory = predictor
        self.keep_results = keep_results
        self.explain = Explainer(machine, self.p4_phys, self.session, detail_limit, cpu)
        #: (probe, expectation, result, verdict) of the last run, when ``keep_results``
        self.last_results: list[tuple[Probe, Expectation, Result, Verdict]] = []
        #: (address, oracle, agreed) of every check of the last run: each probe, then each
        #: KVM_TRANSLATE of the sample (always kept; cheap)
        self.last_checks: list[tuple[int, str, bool]] = []

    @property
    def detail_limit(self) -> int:
        """Disagreements per run explained with both walks."""
        return self.explain.detail_limit

    # -- the run ----------------------------------------------------------------------------

    def verify(self, options: PlanOptions = PlanOptions()) -> Report:  # noqa: B008 (frozen)
        """Probe every mapping (and the holes next to them), compare, report."""
        with _cyclic_gc_paused():
            return self._verify(options)

    def _verify(self, options: PlanOptions) -> Report:
        t0 = time.perf_counter()
        self.explain.explained = 0
        report = Report(host=self._host_line())
        self._note_unavailable(report)
        memory = self.machine.memory
        leaves = Leaves.scan(memory, self.p4_phys, skip_p4=self.skip_p4, cpu=self.cpu)
        predictor = self._predictor_factory(memory, self.p4_phys, self.cpu, self.features)
        # pages that only get a CPL3 read are handled a table at a time, unless every probe's
        # full result is wanted or the software walk is not the architecture's own
        bulk = not self.keep_results and predictor.plain
        if leaves.faults:  # entries the CPU faults on: their first page must fault
            faulting = tuple(dict.fromkeys(f.virt for f in leaves.faults[:FAULTS_PROBED]))
            options = replace(options, extra=(*options.extra, *faulting))
        plan = make_plan(
            leaves, options, excluded_p4=self.skip_p4, bulk=bulk, levels=self.cpu.levels
        )
        report.coverage = plan.coverage
        self._note_unverified(report, leaves)
        frames = table_frames(memory, self.p4_phys, skip_p4=self.skip_p4, levels=self.cpu.levels)
        targets = self._targets(set(frames) | self.session.walked_frames())
        # an oracle without a TLB cannot show a stale translation: leave such probes out
        stale = None if self.machine.models_tlb else self.session.unflushed()
        if stale:
            plan.bulk = _fresh_bulk(plan, stale, self.cpu.levels)
        probes, expectations, values, written = self._prepare(plan, predictor, targets, stale)
        reads = bulk_path.BulkReads(
            plan.bulk, predictor, targets, plan.coverage, first_result=len(probes)
        )
        before = {f: memory.words[f >> 3 : (f >> 3) + 512].tolist() for f in frames}
        t1 = time.perf_counter()
        pipelined = reads.pages > PIPELINE_MIN
        results = self.session.run(probes, self.cpu, reads, pipelined=pipelined)
        chunks = reads.chunks
        t2 = time.perf_counter()
        plan.coverage.count_probed(probes, [c.vas for c in chunks])
        checks.check_probes(self, report, probes, expectations, values, results)
        checks.check_bulk(self, report, chunks, results)
        checks.check_accessed_dirty(self, report, probes, expectations, before, chunks)
        checks.check_data(self, report, written, chunks)
        checks.check_translate(self, report, leaves, options.seed)
        t3 = time.perf_counter()
        report.seconds = {"plan": t1 - t0, "predict+tag+run": t2 - t1, "compare": t3 - t2}
        return report

    def probe(self, va: int) -> list[ProbeCheck]:
        """Read, write and fetch the page of ``va`` at CPL3 and CPL0 (``kvmpage walk``).

        The probes sit at the page's usual offsets (read +0, write +8, fetch +0x40) and go
        through `_prepare` like a verification's, so frames are tagged the same way and a probe
        that would reach a page table or the agent is not run (``skipped`` says why).
        """
        base = va & ~0xFFF
        memory = self.machine.memory
        predictor = self._predictor_factory(memory, self.p4_phys, self.cpu, self.features)
        targets = self._targets()
        checks_: list[ProbeCheck] = []
        to_run: list[tuple[Probe, Expectation, int | None]] = []
        for access, cpl in FULL_SET:
            probe = Probe(base + ACCESS_OFFSETS[access], access, cpl, None)
            plan = Plan([probe], Coverage())
            kept, exps, values, _ = self._prepare(plan, predictor, targets)
            if kept:
                to_run.append((probe, exps[0], values[0]))
            else:
                why = next(iter(plan.coverage.skipped), "skipped")
                checks_.append(ProbeCheck(probe, predictor.expect(probe), None, None, None, why))
        results = self.session.run([p for p, _, _ in to_run], self.cpu)
        for i, (probe, exp, value) in enumerate(to_run):
            result = results.result(i)
            verdict = compare(probe, exp, value, result)
            checks_.append(ProbeCheck(probe, exp, value, result, verdict))
        order = {key: n for n, key in enumerate(FULL_SET)}
        checks_.sort(key=lambda c: order[c.probe.access, c.probe.cpl])
        return checks_

    def _targets(self, protected: set[int] | None = None) -> Targets:
        memory = self.machine.memory
        if protected is None:
            protected = set(
                table_frames(memory, self.p4_phys, skip_p4=self.skip_p4, levels=self.cpu.levels)
            )
            protected |= self.session.walked_frames()
        return Targets(memory, self.machine.reserved[0], protected, self.profile.cpl3_blocked_slots)

    def _prepare(
        self,
        plan: Plan,
        predictor: Predictor,
        targets: Targets,
        stale: Unflushed | None = None,
    ) -> tuple[list[Probe], list[Expectation], list[int | None], dict[int, tuple[int, int]]]:
        """Predict every probe, tag the frames it should reach, drop those that must not run
        (`Targets.skip`, and with ``stale`` those whose answer would depend on a TLB the
        machine does not model).

        Also returns what was written: physical address -> (tag, the probe's address); a tag
        at a fetch offset is a fetch stub.
        """
        memory = self.machine.memory
        words = memory.words
        probes: list[Probe] = []
        expectations: list[Expectation] = []
        values: list[int | None] = []
        written: dict[int, tuple[int, int]] = {}
        fetch_kind = AccessKind.FETCH
        for probe in plan.probes:
            if targets.blocked_slot(probe.va, probe.cpl):
                plan.coverage.skip(BLOCKED)
                continue
            exp = predictor.expect(probe)
            if stale and stale.stale(probe.va, exp.entry_addrs, self.cpu.levels):
                plan.coverage.skip(NOT_CHECKABLE)
                continue
            phys = exp.phys
            value: int | None = None
            if phys is not None:
                why = targets.skip(phys, probe.access, probe.cpl)
                if why is not None:
                    plan.coverage.skip(why)
                    continue
                value = tag(phys)
                if targets.tagged(phys):
                    if probe.access is fetch_kind:
                        memory.write(phys, fetch_stub(value))
                    else:
                        words[phys >> 3] = value
                    written[phys] = (value, probe.va)
            probes.append(probe)
            expectations.append(exp)
            values.append(value)
        return probes, expectations, values, written

    # -- what the report says about the host ---------------------------------------------------

    def _host_line(self) -> str:
        p = self.profile
        return (
            f"{p.kind.value} (CPL3: {p.cpl3_oracle}, CPL0: {p.cpl0_oracle}), "
            f"MAXPHYADDR {p.maxphyaddr}"
        )

    def _note_unavailable(self, report: Report) -> None:
        for name in _FEATURES_REPORTED:
            result = self.profile.features.get(name)
            if result is not None and not result.works:
                report.unavailable[name] = result.evidence
        for flag, feature in ((self.cpu.smep, "smep"), (self.cpu.smap, "smap")):
            if flag and not self.profile.supports(feature):
                raise ValueError(f"CR4.{feature.upper()} was asked for but the host lacks it")

    def _note_unverified(self, report: Report, leaves: Leaves) -> None:
        if not self.features.gbpages:
            n = sum(len(g.indices) for g in leaves.groups if g.level == 3)
            if n:
                report.unverified[
                    "1 GiB mappings: this host faults on 1 GiB pages (reserved bit); they were "
                    "predicted and checked as such, not as mappings"
                ] = n


def _fresh_bulk(plan: Plan, stale: Unflushed, depth: int) -> list[BulkGroup]:
    """``plan.bulk`` without the pages whose read would depend on a stale TLB entry (counted
    in the plan's coverage as not checkable)."""
    kept: list[BulkGroup] = []
    for bulk in plan.bulk:
        group = bulk.group
        fresh = [
            i
            for i in bulk.indices
            if not stale.stale(group.virt(i), (*group.parent_addrs, group.table + 8 * i), depth)
        ]
        if len(fresh) < len(bulk.indices):
            plan.coverage.skip(NOT_CHECKABLE, len(bulk.indices) - len(fresh))
        if fresh:
            kept.append(BulkGroup(group, fresh))
    return kept


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a verification builds its (acyclic) tuples.

    A large layout makes millions of small tuples; each generation-0 collection would walk
    them again (about 40 % of the Python time at 262,144 pages). Nothing here makes cycles,
    reference counting frees everything, and the previous state is restored on every path.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def verify(
    mapper: TableMapper,
    machine: ProbeMachine,
    *,
    cpu: CpuState = CpuState(),  # noqa: B008 (frozen)
    options: PlanOptions = PlanOptions(),  # noqa: B008 (frozen)
    **kwargs: Any,
) -> Report:
    """Verify ``mapper``'s tables on ``machine`` once (see `Verifier` for repeated runs)."""
    return Verifier(mapper, machine, cpu=cpu, **kwargs).verify(options)
