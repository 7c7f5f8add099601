"""Verify a mapper's tables against the CPU: ``report = verify(mapper, machine)``.

The mapper must write into the machine's memory (build it over ``machine.memory``, with tables
below ``machine.reserved[0]``). `Verifier` keeps one address space in step with the machine
across several verifications, so that changes made between them (unmap, remap,
``update_flags``, ``clean_up``...) reach the guest the way a kernel would apply them, followed
by exactly the flushes the mapper's tokens asked for.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any

from kvmpage.layout.walk import format_steps, format_walk, steps_of
from kvmpage.machine import ProbeMachine, fetch_stub
from kvmpage.machine.machine import APIC_PAGE
from kvmpage.machine.protocol import Result
from kvmpage.memory import PhysMemory
from kvmpage.paging.access import AccessKind, CpuState, Features
from kvmpage.paging.leaves import Leaf, Leaves, table_frames
from kvmpage.paging.mapper import RecursivePageTable, TableMapper
from kvmpage.verify import bulk as bulk_path
from kvmpage.verify.bulk import BulkChunk
from kvmpage.verify.compare import (
    AccessedDirty,
    Verdict,
    agrees,
    compare,
    describe_expectation,
    describe_result,
)
from kvmpage.verify.predict import Expectation, Predictor
from kvmpage.verify.probes import (
    ACCESS_OFFSETS,
    FETCH_OFFSET,
    FULL_SET,
    BulkGroup,
    Coverage,
    Plan,
    PlanOptions,
    Probe,
    make_plan,
    tag,
)
from kvmpage.verify.report import Disagreement, Report
from kvmpage.verify.session import MachineTlb, RunResults, Session
from kvmpage.verify.tlb import NOT_CHECKABLE, Unflushed

__all__ = [
    "CpuState",
    "MachineTlb",
    "ProbeCheck",
    "PlanOptions",
    "Predictor",
    "Report",
    "Session",
    "Verifier",
    "verify",
]

PredictorFactory = Callable[[PhysMemory, int, CpuState, Features], Predictor]
TRANSLATE_SAMPLE = 256
APIC_FETCH = (
    "CPL0 fetch from the local APIC page (this host's instruction emulator sends it to MMIO "
    "even where there is RAM)"
)
#: entries the CPU faults on (reserved bits) probed per run, at their first page
FAULTS_PROBED = 4096
#: disagreements per run explained with both walks (`Verifier`'s ``detail_limit``)
DETAIL_LIMIT = 1000
#: bulk reads above which tagging and probing run as a pipeline (see `Session.run`)
PIPELINE_MIN = 65536
_ALL_ENTRIES = frozenset(range(512))
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
            self.p4_phys = mapper.level_4_table().phys
            if isinstance(mapper, RecursivePageTable):
                skip.add(mapper.recursive_index)
        elif root is not None:
            self.p4_phys = root
        else:
            raise ValueError("a Verifier needs a mapper or the root of the tables (root=...)")
        self.skip_p4 = frozenset(skip)
        self.session = Session(machine, self.p4_phys, skip_p4=self.skip_p4)
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
        self.detail_limit = detail_limit
        self._explained = 0  # disagreements of the current run explained with their walks
        #: (probe, expectation, result, verdict) of the last run, when ``keep_results``
        self.last_results: list[tuple[Probe, Expectation, Result, Verdict]] = []
        #: (address, oracle, agreed) of every check of the last run: each probe, then each
        #: KVM_TRANSLATE of the sample (always kept; cheap)
        self.last_checks: list[tuple[int, str, bool]] = []

    # -- the run ----------------------------------------------------------------------------

    def verify(self, options: PlanOptions = PlanOptions()) -> Report:  # noqa: B008 (frozen)
        """Probe every mapping (and the holes next to them), compare, report."""
        with _cyclic_gc_paused():
            return self._verify(options)

    def _verify(self, options: PlanOptions) -> Report:
        t0 = time.perf_counter()
        self._explained = 0
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
        plan = make_plan(leaves, options, excluded_p4=self.skip_p4, bulk=bulk)
        report.coverage = plan.coverage
        self._note_unverified(report, leaves)
        frames = table_frames(memory, self.p4_phys, skip_p4=self.skip_p4)
        protected = set(frames) | self.session.walked_frames()
        # an oracle without a TLB cannot show a stale translation: leave such probes out
        stale = None if self.machine.models_tlb else self.session.unflushed()
        if stale:
            plan.bulk = _fresh_bulk(plan, stale, self.cpu.levels)
        probes, expectations, values, written = self._prepare(plan, predictor, protected, stale)
        reads = bulk_path.BulkReads(
            plan.bulk,
            predictor,
            bulk_path.Memory(memory.words, memory.size, self.machine.reserved[0], protected),
            plan.coverage,
            blocked=self.profile.cpl3_blocked_slots,
            first_result=len(probes),
        )
        before = {f: memory.words[f >> 3 : (f >> 3) + 512].tolist() for f in frames}
        t1 = time.perf_counter()
        pipelined = reads.pages > PIPELINE_MIN
        results = self.session.run(probes, self.cpu, reads, pipelined=pipelined)
        chunks = reads.chunks
        t2 = time.perf_counter()
        plan.coverage.count_probed(probes, [c.vas for c in chunks])
        self._compare_probes(report, probes, expectations, values, results)
        self._compare_bulk(report, chunks, results)
        self._compare_ad(report, probes, expectations, before, chunks)
        self._compare_data(report, written, chunks)
        self._compare_translate(report, leaves, options.seed)
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
        checks: list[ProbeCheck] = []
        to_run: list[tuple[Probe, Expectation, int | None]] = []
        for access, cpl in FULL_SET:
            probe = Probe(base + ACCESS_OFFSETS[access], access, cpl, None)
            plan = Plan([probe], Coverage())
            kept, exps, values, _ = self._prepare(plan, predictor)
            if kept:
                to_run.append((probe, exps[0], values[0]))
            else:
                why = next(iter(plan.coverage.skipped), "skipped")
                checks.append(ProbeCheck(probe, predictor.expect(probe), None, None, None, why))
        results = self.session.run([p for p, _, _ in to_run], self.cpu)
        for i, (probe, exp, value) in enumerate(to_run):
            result = results.result(i)
            checks.append(ProbeCheck(probe, exp, value, result, compare(probe, exp, value, result)))
        order = {key: n for n, key in enumerate(FULL_SET)}
        checks.sort(key=lambda c: order[c.probe.access, c.probe.cpl])
        return checks

    def _prepare(
        self,
        plan: Plan,
        predictor: Predictor,
        protected: set[int] | None = None,
        stale: Unflushed | None = None,
    ) -> tuple[list[Probe], list[Expectation], list[int | None], dict[int, tuple[int, int]]]:
        """Predict every probe, tag the frames it should reach, drop the unsafe ones (and,
        with ``stale``, those whose answer would depend on a TLB the machine does not model).

        Also returns what was written: physical address -> (tag, the probe's address); a tag
        at a fetch offset is a fetch stub.
        """
        memory = self.machine.memory
        words = memory.words
        size = memory.size
        if protected is None:
            protected = set(table_frames(memory, self.p4_phys, skip_p4=self.skip_p4))
            protected |= self.session.walked_frames()
        reserved_start = self.machine.reserved[0]
        probes: list[Probe] = []
        expectations: list[Expectation] = []
        values: list[int | None] = []
        written: dict[int, tuple[int, int]] = {}
        fetch = AccessKind.FETCH
        apic_page = APIC_PAGE >> 12
        blocked = self.profile.cpl3_blocked_slots
        for probe in plan.probes:
            if blocked and probe.cpl == 3 and (probe.va >> 39) & 511 in blocked:
                plan.coverage.skip("CPL3 access in a PML4 slot this host keeps for itself")
                continue
            exp = predictor.expect(probe)
            if stale and stale.stale(probe.va, exp.entry_addrs, self.cpu.levels):
                plan.coverage.skip(NOT_CHECKABLE)
                continue
            phys = exp.phys
            value: int | None = None
            if phys is not None:
                if probe.access is fetch:  # an MMIO exit cannot be answered with code
                    if not memory.contains(phys, 16):
                        plan.coverage.skip("fetch from guest-physical memory that is not RAM")
                        continue
                    if probe.cpl == 0 and phys >> 12 == apic_page:
                        plan.coverage.skip(APIC_FETCH)
                        continue
                if phys >= size:  # no RAM: the MMIO exit answers with the address's tag
                    value = tag(phys)
                elif phys >= reserved_start:
                    plan.coverage.skip("reaches the agent's own memory")
                    continue
                elif phys & ~0xFFF in protected:
                    plan.coverage.skip("reaches a page-table frame")
                    continue
                else:
                    value = tag(phys)
                    if probe.access is fetch:
                        memory.write(phys, fetch_stub(value))
                    else:
                        words[phys >> 3] = value
                    written[phys] = (value, probe.va)
            probes.append(probe)
            expectations.append(exp)
            values.append(value)
        return probes, expectations, values, written

    # -- comparisons --------------------------------------------------------------------------

    def _compare_bulk(self, report: Report, chunks: list[BulkChunk], results: RunResults) -> None:
        """`_compare_probes` for the bulk pages, a chunk at a time; a disagreement is explained
        with the very prediction it was compared against."""
        oracle = self.profile.cpl3_oracle
        total = sum(len(c.vas) for c in chunks)
        bad: set[int] = set()
        for chunk, j in bulk_path.disagreeing(chunks, results):
            va, leaf, outcome = chunk.vas[j], chunk.leaf(j), chunk.outcomes[j]
            bad.add(va)
            phys = None if outcome.fault is not None else leaf.phys | (va & (leaf.size - 1))
            exp = Expectation(
                outcome, phys, leaf.parents, leaf.parent_addrs, leaf.raw, leaf.entry_addr
            )
            probe = Probe(va, AccessKind.READ, 3, leaf)
            self._report_probe(report, probe, exp, chunk.values[j], results.result(chunk.first + j))
        for chunk in chunks:
            if bad:
                self.last_checks += [(va, oracle, va not in bad) for va in chunk.vas]
            else:
                self.last_checks += zip(chunk.vas, repeat(oracle), repeat(True))
        report.add_count(oracle, True, total - len(bad))
        report.add_count(oracle, False, len(bad))

    def _compare_probes(
        self,
        report: Report,
        probes: list[Probe],
        expectations: list[Expectation],
        values: list[int | None],
        results: RunResults,
    ) -> None:
        oracle = {3: self.profile.cpl3_oracle, 0: self.machine.cpl0_oracle}
        counts = {(o, ok): 0 for o in set(oracle.values()) for ok in (True, False)}
        self.last_results = []
        checks = self.last_checks = []
        for i, (probe, exp, value, rec) in enumerate(
            zip(probes, expectations, values, results.records(0, len(probes)), strict=True)
        ):
            ok = agrees(probe, exp.outcome, value, rec)
            name = oracle[probe.cpl]
            counts[name, ok] += 1
            checks.append((probe.va, name, ok))
            if ok and not self.keep_results:
                continue
            result = results.result(i)
            verdict = compare(probe, exp, value, result)
            if self.keep_results:
                self.last_results.append((probe, exp, result, verdict))
            if not verdict.agree:
                self._report_probe(report, probe, exp, value, result, verdict)
        for (name, ok), n in counts.items():
            report.add_count(name, ok, n)

    def _report_probe(
        self,
        report: Report,
        probe: Probe,
        exp: Expectation,
        value: int | None,
        result: Result,
        verdict: Verdict | None = None,
    ) -> None:
        """Add the disagreement of one probe, with both walks."""
        if verdict is None:
            verdict = compare(probe, exp, value, result)
        software, hardware = self._walks(probe.va, exp)
        report.disagreements.append(
            Disagreement(
                kind="probe",
                va=probe.va,
                access=probe.access.value,
                cpl=probe.cpl,
                oracle=result.oracle,
                expected=describe_expectation(exp, value, probe.va),
                actual=describe_result(result),
                why=verdict.why,
                software_walk=software,
                hardware_walk=hardware,
                note=self._flush_note(probe.va),
            )
        )

    def _compare_ad(
        self,
        report: Report,
        probes: list[Probe],
        expectations: list[Expectation],
        before: dict[int, list[int]],
        chunks: list[BulkChunk],
    ) -> None:
        """Every entry's A and D bits after the run against what the probes required."""
        memory = self.machine.memory
        pairs = list(zip(probes, expectations, strict=True))
        ad = AccessedDirty.of(pairs)
        after = {f: memory.words[f >> 3 : (f >> 3) + 512].tolist() for f in before}
        verified = bulk_path.check_accessed_dirty(chunks, ad, before, after)
        must = ad.must_a | ad.must_d
        report.entries_checked = len(ad.entries()) + sum(len(v) for v in verified.values())
        problems: list[tuple[int, int, int, str]] = []
        must_frames = {a & ~0xFFF for a in must}
        for frame, old in before.items():
            new = after[frame]
            if old == new and frame not in must_frames:
                continue
            done = verified.get(frame)
            for i in range(512) if done is None else sorted(_ALL_ENTRIES - done):
                before_value, after_value = old[i], new[i]
                addr = frame + 8 * i
                if before_value == after_value and addr not in must:
                    continue
                problem = ad.check(addr, before_value, after_value)
                if problem is not None:
                    problems.append((addr, before_value, after_value, problem))
        users_of = _users(pairs, chunks, {addr for addr, _, _, _ in problems}) if problems else {}
        for addr, old_value, new_value, problem in problems:
            users = users_of[addr]
            oracle = self.profile.cpl3_oracle
            if users and all(p.cpl == 0 for p in users):
                oracle = self.machine.cpl0_oracle
            report.disagreements.append(
                Disagreement(
                    kind="accessed-dirty",
                    va=users[0].va if users else 0,
                    access="entry",
                    cpl=None,
                    oracle=oracle,
                    expected=ad.describe(addr, old_value),
                    actual=f"after {new_value:#x}",
                    why=f"entry at {addr:#x}: {problem}",
                    software_walk=[
                        "  probes through this entry: "
                        + (", ".join(p.describe() for p in users[:3]) or "none")
                    ],
                    hardware_walk=[],
                )
            )

    def _compare_data(
        self, report: Report, written: dict[int, tuple[int, int]], chunks: list[BulkChunk]
    ) -> None:
        """Every tag and fetch stub must still be there: write probes store the tag already in
        place, so any change means a write reached a frame the software did not predict."""
        memory = self.machine.memory
        words = memory.words
        report.data_checked = len(written)
        changed: list[tuple[int, int, int]] = []  # (physical address, tag, probe address)
        for chunk in chunks:
            report.data_checked += len(chunk.tagged)
            changed += bulk_path.changed_tags(words, chunk)
        for phys, (value, va) in written.items():
            if phys & 0xFFF == FETCH_OFFSET:
                if memory.read(phys, len(stub := fetch_stub(value))) != stub:
                    changed.append((phys, value, va))
            elif words[phys >> 3] != value:
                changed.append((phys, value, va))
        for phys, value, va in changed:
            if phys & 0xFFF == FETCH_OFFSET:
                found = memory.read(phys, len(fetch_stub(value))).hex()
            else:
                found = f"{words[phys >> 3]:#x}"
            software, hardware = self._walks(va)
            report.disagreements.append(
                Disagreement(
                    kind="data",
                    va=va,
                    access="memory",
                    cpl=None,
                    oracle="readback",
                    expected=f"physical {phys:#x} still holds {value:#x} (or its fetch stub)",
                    actual=f"it holds {found}",
                    why=f"memory at {phys:#x} changed during the run: a write landed there",
                    software_walk=software,
                    hardware_walk=hardware,
                )
            )

    def _compare_translate(self, report: Report, leaves: Sequence[Leaf], seed: int) -> None:
        """KVM_TRANSLATE as a third opinion on addresses for a sample of pages.

        KVM translates as an implicit supervisor read: presence, reserved bits and SMAP decide,
        not U/S for reads, R/W or NX."""
        if not leaves or self.machine.translate_oracle is None:
            return
        oracle = self.machine.translate_oracle
        rng = random.Random(seed)
        sample = leaves if len(leaves) <= TRANSLATE_SAMPLE else rng.sample(leaves, TRANSLATE_SAMPLE)
        # KVM_TRANSLATE walks as an implicit supervisor read: SMAP applies whatever RFLAGS.AC
        implicit = CpuState(wp=False, smep=False, smap=self.cpu.smap, ac=False, nxe=self.cpu.nxe)
        predictor = Predictor(self.machine.memory, self.p4_phys, implicit, self.features)
        for leaf in sample:
            va = leaf.virt + (leaf.size >> 1) + 0x18
            exp = predictor.expect(Probe(va, AccessKind.READ, 0, leaf))
            got = self.machine.translate(va)
            agree = got == exp.phys
            report.add_count(oracle, agree, 1)
            self.last_checks.append((va, oracle, agree))
            if not agree:
                software, hardware = self._walks(va, exp)
                report.disagreements.append(
                    Disagreement(
                        kind="translate",
                        va=va,
                        access="translate",
                        cpl=None,
                        oracle=oracle,
                        expected=describe_expectation(exp, None, va),
                        actual="no translation" if got is None else f"physical {got:#x}",
                        why="KVM_TRANSLATE disagrees with the software walk",
                        software_walk=software,
                        hardware_walk=hardware,
                    )
                )

    # -- explanations -----------------------------------------------------------------------

    def _walks(self, va: int, exp: Expectation | None = None) -> tuple[list[str], list[str]]:
        """Both walks of ``va`` for a disagreement (the software's: ``exp``'s, or the tables'
        in memory), or a line saying why they are left out once `detail_limit` is reached."""
        if self._explained >= self.detail_limit:
            why = (
                f"  (walks left out: more than {self.detail_limit} disagreements in this run; "
                "Verifier(detail_limit=...) raises the limit)"
            )
            return [why], []
        self._explained += 1
        software = self._software_walk_of(va) if exp is None else self._software_walk(va, exp)
        return software, self._hardware_walk(va)

    def _software_walk(self, va: int, exp: Expectation) -> list[str]:
        lines = [f"walk of {va:#018x}"]
        lines += format_steps(steps_of(va, exp.entries, exp.entry_addrs))
        lines.append(f"  -> {describe_expectation(exp, None, va)}")
        return lines

    def _software_walk_of(self, va: int) -> list[str]:
        return format_walk(self.machine.memory, self.p4_phys, va)

    def _hardware_walk(self, va: int) -> list[str]:
        lines = format_walk(self.machine.memory, self.p4_phys, va)
        if self.machine.translate_oracle is None:
            return lines
        got = self.machine.translate(va)
        lines.append("  KVM_TRANSLATE: " + ("no valid translation" if got is None else f"{got:#x}"))
        return lines

    def _flush_note(self, va: int) -> str:
        if any(kind == "invlpg" and v >> 12 == va >> 12 for kind, v in self.session.last_flushes):
            return ""
        if self.session.last_replayed:
            return (
                "tables changed since the last run and no flush covered this page"
                if not any(k == "flush_all" for k, _ in self.session.last_flushes)
                else ""
            )
        return ""

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


def _users(
    pairs: list[tuple[Probe, Expectation]], chunks: list[BulkChunk], addrs: set[int], most: int = 3
) -> dict[int, list[Probe]]:
    """Up to ``most`` probes whose walks go through each entry of ``addrs`` (one pass over the
    probes and the bulk pages, however many entries are asked about)."""
    users: dict[int, list[Probe]] = {a: [] for a in addrs}
    for probe, exp in pairs:
        for a in exp.entry_addrs:
            found = users.get(a)
            if found is not None and len(found) < most:
                found.append(probe)
    for chunk in chunks:
        group = chunk.group
        above = [users[a] for a in group.parent_addrs if a in users]
        for j, i in enumerate(chunk.indices):
            own = users.get(group.table + 8 * i)
            for found in (*above, own) if own is not None else above:
                if len(found) < most:
                    found.append(Probe(chunk.vas[j], AccessKind.READ, 3, chunk.leaf(j)))
    return users


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
