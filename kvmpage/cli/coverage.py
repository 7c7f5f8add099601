"""What a verification did not verify, said plainly: the ``coverage:`` line of ``kvmpage
verify`` and the list that ``--strict`` turns into exit status 1.

Exit status 0 means every probe that ran agreed; these say what did not run. A large layout is
sampled (every page is read at CPL3, a sample gets the full set), some probes are never run
(they would write a page table or the agent's memory, or this host keeps a PML4 slot from
CPL3), some features cannot be checked on this host, and the audit (W+X, writable page
tables...) may have findings. A reader of the text sees each; ``--strict`` fails on any.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmpage.cli.errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK
from kvmpage.cli.output import audit_summary
from kvmpage.layout.audit import Finding
from kvmpage.verify import Report
from kvmpage.verify.probes import Coverage


def _counts(cov: Coverage, cpl: int) -> str:
    return "/".join(str(cov.probed.get(f"{a}@cpl{cpl}", 0)) for a in ("read", "write", "fetch"))


def coverage_line(cov: Coverage, *, cpl0: bool) -> str:
    """``coverage: N pages; probed (read/write/fetch) at CPL3 a/b/c, at CPL0 d/e/f; how``."""
    head = (
        f"coverage: {cov.pages} page{'s' if cov.pages != 1 else ''}; probed (read/write/fetch) "
        f"at CPL3 {_counts(cov, 3)}, at CPL0 {_counts(cov, 0)}; "
    )
    if cov.complete:
        return head + "complete (every page read, written and fetched at CPL3 and CPL0)"
    why = []
    if cov.pages_full < cov.pages:
        why.append(
            f"sampled: {cov.pages_full} pages got every probe, the other "
            f"{cov.pages - cov.pages_full} a CPL3 read only (--all probes every page)"
        )
    if not cpl0:
        why.append("CPL0 not probed (--cpl3-only)")
    if cov.skipped:
        why.append("some probes not run (listed below)")
    return head + "; ".join(why or ["incomplete"])


def not_verified(
    report: Report,
    findings: Sequence[Finding],
    *,
    cpl0: bool,
    dropped_gbpage: bool,
    gbpage_leaves: int,
) -> list[str]:
    """Everything this run left unverified, one phrase each (empty: all of it was verified).

    ``--strict`` exits 1 when the list is not empty; the JSON document carries it as
    ``not_verified``."""
    cov = report.coverage
    out = [f"{n} probes not run ({reason})" for reason, n in sorted(cov.skipped.items())]
    if cov.pages_full < cov.pages:
        out.append(f"{cov.pages - cov.pages_full} of {cov.pages} pages sampled, not fully probed")
    if not cpl0:
        out.append("no CPL0 probe (--cpl3-only)")
    if not cov.complete and not out:
        out.append("coverage incomplete")
    out += [f"{n} {reason}" for reason, n in sorted(report.unverified.items())]
    used = {
        "1gib-pages": gbpage_leaves > 0 or dropped_gbpage,
        "cpl3-every-pml4-slot": any("PML4 slot" in reason for reason in cov.skipped),
    }
    for feature in sorted(report.unavailable):
        if used.get(feature, False):
            out.append(f"the layout uses {feature}, which this host cannot verify")
    if dropped_gbpage:
        out.append("the built-in layout's 1 GiB page was left out")
    if findings:
        out.append(audit_summary(findings).split(";")[0])
    return out


def exit_status(report: Report, *, strict: bool, gaps: Sequence[str]) -> tuple[int, str | None]:
    """The exit status of a verification and, when it could not verify anything, the error:
    1 on a disagreement; 2 when no probe ran (``KVM_TRANSLATE`` alone is no check: never a
    pass); with ``strict``, 1 when anything was left unverified (``gaps``); else 0."""
    if not report.ok:
        return EXIT_FAIL, None
    probes = sum(c.probes for oracle, c in report.oracles.items() if oracle != "kvm-translate")
    if probes == 0:
        return EXIT_ERROR, "no probe ran: nothing was verified"
    return (EXIT_FAIL if strict and gaps else EXIT_OK), None
