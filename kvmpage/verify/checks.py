"""The checks of a verification run, each comparing one kind of evidence with the software:

- `check_probes`: every probe's result (value read, or fault with vector, error code, CR2);
- `check_bulk`: the same for the pages of a large layout that get a CPL3 read, column-wise;
- `check_accessed_dirty`: every entry's A and D bits after the run;
- `check_data`: every tag and fetch stub still in place (a stray write is a disagreement);
- `check_translate`: KVM_TRANSLATE's answer for a sample of pages (a third opinion).

Each adds its counts and disagreements to the run's `Report`, and what it checked to the
verifier's ``last_checks`` (which ``kvmpage verify`` turns into per-run verdicts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import repeat
from typing import TYPE_CHECKING

from kvmpage.machine import fetch_stub
from kvmpage.machine.protocol import Result
from kvmpage.paging.access import AccessKind, CpuState
from kvmpage.paging.leaves import Leaf
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
from kvmpage.verify.probes import FETCH_OFFSET, Probe
from kvmpage.verify.report import Disagreement, Report
from kvmpage.verify.session import RunResults

if TYPE_CHECKING:
    from kvmpage.verify.verifier import Verifier

#: pages whose KVM_TRANSLATE is asked per run
TRANSLATE_SAMPLE = 256
_ALL_ENTRIES = frozenset(range(512))


def check_probes(
    v: Verifier,
    report: Report,
    probes: list[Probe],
    expectations: list[Expectation],
    values: list[int | None],
    results: RunResults,
) -> None:
    """Every probe's record against its prediction (first, raw records; the full `Result` of
    those that disagree or are kept)."""
    oracle = {3: v.profile.cpl3_oracle, 0: v.machine.cpl0_oracle}
    counts = {(o, ok): 0 for o in set(oracle.values()) for ok in (True, False)}
    v.last_results = []
    checks = v.last_checks = []
    for i, (probe, exp, value, rec) in enumerate(
        zip(probes, expectations, values, results.records(0, len(probes)), strict=True)
    ):
        ok = agrees(probe, exp.outcome, value, rec)
        name = oracle[probe.cpl]
        counts[name, ok] += 1
        checks.append((probe.va, name, ok))
        if ok and not v.keep_results:
            continue
        result = results.result(i)
        verdict = compare(probe, exp, value, result)
        if v.keep_results:
            v.last_results.append((probe, exp, result, verdict))
        if not verdict.agree:
            report_probe(v, report, probe, exp, value, result, verdict)
    for (name, ok), n in counts.items():
        report.add_count(name, ok, n)


def check_bulk(v: Verifier, report: Report, chunks: list[BulkChunk], results: RunResults) -> None:
    """`check_probes` for the bulk pages, a chunk at a time; a disagreement is explained with
    the very prediction it was compared against."""
    oracle = v.profile.cpl3_oracle
    total = sum(len(c.vas) for c in chunks)
    bad: set[int] = set()
    for chunk, j in bulk_path.disagreeing(chunks, results):
        va, leaf, outcome = chunk.vas[j], chunk.leaf(j), chunk.outcomes[j]
        bad.add(va)
        phys = None if outcome.fault is not None else leaf.phys | (va & (leaf.size - 1))
        exp = Expectation(outcome, phys, leaf.parents, leaf.parent_addrs, leaf.raw, leaf.entry_addr)
        probe = Probe(va, AccessKind.READ, 3, leaf)
        report_probe(v, report, probe, exp, chunk.values[j], results.result(chunk.first + j))
    for chunk in chunks:
        if bad:
            v.last_checks += [(va, oracle, va not in bad) for va in chunk.vas]
        else:
            v.last_checks += zip(chunk.vas, repeat(oracle), repeat(True))
    report.add_count(oracle, True, total - len(bad))
    report.add_count(oracle, False, len(bad))


def report_probe(
    v: Verifier,
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
    software, hardware = v.explain.walks(probe.va, exp)
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
            note=v.explain.flush_note(probe.va),
        )
    )


def check_accessed_dirty(
    v: Verifier,
    report: Report,
    probes: list[Probe],
    expectations: list[Expectation],
    before: dict[int, list[int]],
    chunks: list[BulkChunk],
) -> None:
    """Every entry's A and D bits after the run against what the probes required."""
    memory = v.machine.memory
    pairs = list(zip(probes, expectations, strict=True))
    ad = AccessedDirty.of(pairs, v.cpu.levels)
    after = {f: memory.words[f >> 3 : (f >> 3) + 512].tolist() for f in before}
    verified = bulk_path.check_accessed_dirty(chunks, ad, before, after)
    must = ad.must_a | ad.must_d
    report.entries_checked = len(ad.entries()) + sum(len(s) for s in verified.values())
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
        oracle = v.profile.cpl3_oracle
        if users and all(p.cpl == 0 for p in users):
            oracle = v.machine.cpl0_oracle
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


def check_data(
    v: Verifier, report: Report, written: dict[int, tuple[int, int]], chunks: list[BulkChunk]
) -> None:
    """Every tag and fetch stub must still be there: write probes store the tag already in
    place, so any change means a write reached a frame the software did not predict."""
    memory = v.machine.memory
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
        software, hardware = v.explain.walks(va)
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


def check_translate(v: Verifier, report: Report, leaves: Sequence[Leaf], seed: int) -> None:
    """KVM_TRANSLATE as a third opinion on addresses for a sample of pages.

    KVM translates as an implicit supervisor read: presence, reserved bits and SMAP decide,
    not U/S for reads, R/W or NX."""
    oracle = v.machine.translate_oracle
    if not leaves or oracle is None:
        return
    rng = random.Random(seed)
    sample = leaves if len(leaves) <= TRANSLATE_SAMPLE else rng.sample(leaves, TRANSLATE_SAMPLE)
    # KVM_TRANSLATE walks as an implicit supervisor read: SMAP applies whatever RFLAGS.AC
    implicit = CpuState(
        wp=False, smep=False, smap=v.cpu.smap, ac=False, nxe=v.cpu.nxe, la57=v.cpu.la57
    )
    predictor = Predictor(v.machine.memory, v.p4_phys, implicit, v.features)
    for leaf in sample:
        va = leaf.virt + (leaf.size >> 1) + 0x18
        exp = predictor.expect(Probe(va, AccessKind.READ, 0, leaf))
        got = v.machine.translate(va)
        agree = got == exp.phys
        report.add_count(oracle, agree, 1)
        v.last_checks.append((va, oracle, agree))
        if not agree:
            software, hardware = v.explain.walks(va, exp)
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
