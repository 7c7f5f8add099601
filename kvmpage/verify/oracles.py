"""Two oracles on the same tables: KVM and TCG side by side (``kvmpage verify --oracle both``).

Each oracle's verifier already compares its results with the software. Here the results are
also compared with each other, probe by probe (same address, access and CPL): where the
software predicts the same outcome for both CPUs and yet their results differ, one of them
is wrong, which is a finding of its own (a KVM or a QEMU bug), reported like a disagreement
and naming both oracles. A probe whose prediction differs between the two (the CPUs differ,
e.g. in MAXPHYADDR) is compared with its own prediction only, and counted as not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kvmpage.machine.protocol import Result
from kvmpage.verify import Verifier
from kvmpage.verify.compare import describe_expectation, describe_result
from kvmpage.verify.probes import Coverage
from kvmpage.verify.report import Disagreement, Report

#: the label of the comparison between the two oracles
CROSS = "kvm-vs-tcg"


@dataclass
class CrossCheck:
    """The probe-by-probe comparison of two verifiers' last runs."""

    #: (address, `CROSS`, same result) per compared probe, as `Verifier.last_checks`
    checks: list[tuple[int, str, bool]] = field(default_factory=list)
    findings: list[Disagreement] = field(default_factory=list)
    #: probes only one oracle ran, or whose predictions differ between the two CPUs
    not_compared: int = 0

    @property
    def compared(self) -> int:
        return len(self.checks)

    def to_dict(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "differ": len(self.findings),
            "not_compared": self.not_compared,
        }


def same_result(a: Result, b: Result) -> bool:
    """Whether two oracles did the same thing: status, value, and for a fault its vector,
    error code and (#PF) CR2. Where the code ran (RIP) is each machine's own."""
    if a.status != b.status or a.value != b.value:
        return False
    if a.fault is None or b.fault is None:
        return a.fault is b.fault
    return (a.fault.vector, a.fault.error_code, a.fault.cr2) == (
        b.fault.vector,
        b.fault.error_code,
        b.fault.cr2,
    )


def cross_check(first: Verifier, second: Verifier, *, names: tuple[str, str]) -> CrossCheck:
    """Compare the probes both verifiers ran in their last run (each kept with
    ``keep_results``); ``names`` label the two sides in the findings (``"kvm"``, ``"tcg"``)."""
    out = CrossCheck()
    theirs = {(p.va, p.access, p.cpl): (exp, r) for p, exp, r, _ in first.last_results}
    seen = 0
    for probe, exp, result, _ in second.last_results:
        other = theirs.get((probe.va, probe.access, probe.cpl))
        if other is None:
            continue
        seen += 1
        exp_first, result_first = other
        if (exp_first.outcome.fault, exp_first.phys) != (exp.outcome.fault, exp.phys):
            out.not_compared += 1
            continue
        same = same_result(result_first, result)
        out.checks.append((probe.va, CROSS, same))
        if same:
            continue
        a, b = names
        out.findings.append(
            Disagreement(
                kind="oracles",
                va=probe.va,
                access=probe.access.value,
                cpl=probe.cpl,
                oracle=CROSS,
                expected=f"{a} ({result_first.oracle}): {describe_result(result_first)}",
                actual=f"{b} ({result.oracle}): {describe_result(result)}",
                why=(
                    f"{a} and {b} differ on the same probe of the same tables (one of them is "
                    f"wrong: a bug in KVM or in QEMU); the software says "
                    f"{describe_expectation(exp, None, probe.va)}"
                ),
                software_walk=[],
                hardware_walk=[],
            )
        )
    out.not_compared += len(first.last_results) - seen + len(second.last_results) - seen
    return out


def merge(reports: dict[str, Report], cross: CrossCheck) -> Report:
    """One report of both oracles: the counts side by side (their labels differ), every
    disagreement of each with the software, then the differences between them."""
    names = list(reports)
    merged = Report(host=" | ".join(f"{n}: {r.host}" for n, r in reports.items()))
    for name, r in reports.items():
        for oracle, count in r.oracles.items():
            merged.add_count(oracle, True, count.agree)
            merged.add_count(oracle, False, count.disagree)
        merged.disagreements += r.disagreements
        merged.entries_checked += r.entries_checked
        merged.data_checked += r.data_checked
        merged.unavailable.update({f"{f} ({name})": why for f, why in r.unavailable.items()})
        merged.unverified.update({f"{why} ({name})": n for why, n in r.unverified.items()})
        merged.seconds.update({f"{name} {k}": v for k, v in r.seconds.items()})
    merged.add_count(CROSS, True, cross.compared - len(cross.findings))
    merged.add_count(CROSS, False, len(cross.findings))
    merged.disagreements += cross.findings
    merged.coverage = _coverage([reports[n].coverage for n in names], names)
    return merged


def _coverage(coverages: list[Coverage], names: list[str]) -> Coverage:
    """The first oracle's coverage; a skip reason the oracles counted differently is kept
    once per oracle, named."""
    out = replace(coverages[0], skipped={})
    reasons = {reason for c in coverages for reason in c.skipped}
    for reason in sorted(reasons):
        counts = [c.skipped.get(reason, 0) for c in coverages]
        if len(set(counts)) == 1:
            out.skip(reason, counts[0])
            continue
        for name, n in zip(names, counts, strict=True):
            if n:
                out.skip(f"{reason} ({name})", n)
    return out
