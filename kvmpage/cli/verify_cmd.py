"""``kvmpage verify [LAYOUT]``: build a layout on a KVM machine and check it against the CPU.

The output is the dump's table with one verdict column per oracle: ``ok`` when every probe of
that oracle on the run's pages agreed with the software, ``FAIL`` when one did not, ``-`` when
that oracle did not probe the run. Then the disagreements in full, a ``coverage:`` line (pages
probed by each access at each CPL, out of the total; complete or sampled), what could not be
checked, and one summary line. Exit status 0 means every probe that ran agreed; ``--strict``
makes anything left unverified (`kvmpage.cli.coverage.not_verified`) exit status 1 too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvmpage.cli.common import EXIT_FAIL, load_spec, on_machine
from kvmpage.cli.coverage import coverage_line, exit_status, not_verified
from kvmpage.cli.oracles import CROSS, profile_of
from kvmpage.cli.output import (
    BUILTIN,
    MappingNames,
    audit_summary,
    cpu_line,
    emit_json,
    finding_json,
    format_table,
    header,
    layout_json,
    run_json,
)
from kvmpage.cli.progress import Progress
from kvmpage.layout.audit import Finding, audit
from kvmpage.layout.dump import Run, runs_of
from kvmpage.layout.spec import LayoutSpec
from kvmpage.machine import HostProfile
from kvmpage.paging.leaves import Leaves, table_frames
from kvmpage.verify import PlanOptions, Report, RunVerdict, run_verdicts

#: the last line's first words, per oracle: (agrees, disagrees)
VERDICTS = {
    "kvm": ("hardware agrees", "HARDWARE DISAGREES"),
    "tcg": ("the TCG MMU agrees", "THE TCG MMU DISAGREES"),
    "both": ("hardware and the TCG MMU agree", "DISAGREEMENT"),
}


def in_slot(run: Run, slot: int, levels: int = 4) -> bool:
    """Whether ``run`` lies in top-level slot ``slot`` (the recursive slot's own mappings)."""
    return (run.virt >> (3 + 9 * levels)) & 511 == slot


def runs_json(
    runs: Sequence[Run],
    verdicts: Sequence[RunVerdict],
    names: Sequence[Sequence[str]],
    slot: int | None,
    levels: int,
) -> list[dict[str, Any]]:
    """The ``runs`` of a layout's verify document: each run with its verdict per oracle and
    whether it lies in the recursive slot ``slot`` (the tables seen as data)."""
    return [
        {
            **run_json(r, n),
            **v.to_json(),
            "recursive_slot": slot is not None and in_slot(r, slot, levels),
        }
        for r, v, n in zip(runs, verdicts, names, strict=True)
    ]


def _text(
    *,
    head: str,
    spec: LayoutSpec,
    profile: HostProfile | Sequence[HostProfile],
    report: Report,
    runs: Sequence[Run],
    names: Sequence[Sequence[str]],
    verdicts: Sequence[RunVerdict],
    holes: RunVerdict,
    findings: Sequence[Finding],
    limit: int,
    dropped_gbpage: bool,
    cpl0: bool = True,
) -> list[str]:
    """The text report, without its final verdict line (``profile``: the oracle's, or each
    oracle's with ``--oracle both``)."""
    profiles = [profile] if isinstance(profile, HostProfile) else list(profile)
    first = [o for p in profiles for o in (p.cpl3_oracle, p.cpl0_oracle)]
    first += ["kvm-translate", CROSS]
    oracles = sorted(
        report.oracles, key=lambda o: (o not in first, first.index(o) if o in first else 0, o)
    )
    lines = [head, f"host: {report.host}; {cpu_line(spec.cpu)}"]
    slot = spec.recursive_index
    levels = spec.cpu.levels
    mine = [i for i, r in enumerate(runs) if slot is None or not in_slot(r, slot, levels)]
    lines += format_table(
        [runs[i] for i in mine],
        [names[i] for i in mine],
        oracles,
        [[verdicts[i].cell(o) for o in oracles] for i in mine],
    )
    if slot is not None and spec.kind == "recursive":
        lines.append(
            f"recursive slot {slot}: not probed (the RecursivePageTable's own window onto its "
            "tables)"
        )
    elif len(mine) < len(runs):
        merged = RunVerdict()
        for i in set(range(len(runs))) - set(mine):
            merged.merge(verdicts[i])
        cells = ", ".join(f"{o} {merged.cell(o)}" for o in oracles)
        lines.append(
            f"recursive slot {slot}: {len(runs) - len(mine)} runs (the tables seen as data "
            f"through entry {slot}), probed: {cells}"
        )
    legend = {
        "kvm-translate": "KVM_TRANSLATE, addresses only",
        CROSS: "the same probe gave KVM and TCG the same result",
    }
    for p in profiles:
        tcg = " on QEMU's TCG" if p.cpl3_oracle == "tcg" else ""
        legend[p.cpl3_oracle] = f"CPL3 probes{tcg}"
        legend[p.cpl0_oracle] = f"CPL0 probes{tcg}"
        if p.cpl3_oracle == p.cpl0_oracle:
            legend[p.cpl3_oracle] = f"CPL3 and CPL0 probes{tcg}"
    if oracles:
        lines.append(
            "columns: "
            + ", ".join(f"{o} = {legend[o]}" for o in oracles if o in legend)
            + "; ok = every probe of the run agreed, FAIL(n) = n disagreed, - = none ran"
        )
    hole_cells = ", ".join(f"{o} {holes.cell(o)}" for o in oracles if o in holes.probes)
    lines.append(
        f"holes: {report.coverage.holes} unmapped pages next to the runs, probed: "
        f"{hole_cells or 'none'}"
    )
    lines.append(coverage_line(report.coverage, cpl0=cpl0))
    ad = sum(1 for d in report.disagreements if d.kind == "accessed-dirty")
    if ad:
        lines.append(
            f"accessed/dirty bits: {ad} of {report.entries_checked} entries disagree (A/D are "
            "per entry, not per run: see below)"
        )
    lines += [d.format() for d in report.disagreements[:limit]]
    if len(report.disagreements) > limit:
        lines.append(f"... {len(report.disagreements) - limit} more disagreements (see --json)")
    if dropped_gbpage:
        lines.append(
            "the built-in layout's 1 GiB page is left out: KVM on this host cannot verify one "
            "(--oracle tcg keeps it)"
        )
    if report.unavailable:
        where = "on this host" if len(profiles) == 1 and profiles[0].kind.value != "tcg" else ""
        where = where or ("by the tcg oracle" if len(profiles) == 1 else "by one of the oracles")
        lines.append(
            f"not verifiable {where}: {', '.join(sorted(report.unavailable))} "
            "(the evidence: kvmpage host)"
        )
    for reason, n in sorted(report.unverified.items()):
        lines.append(f"not verified: {n} {reason}")
    if report.coverage.skipped:
        parts = [f"{n} ({reason})" for reason, n in sorted(report.coverage.skipped.items())]
        lines.append(f"probes not run: {', '.join(parts)}")
    if findings:
        lines.append(audit_summary(findings))
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """``kvmpage verify [LAYOUT]``."""
    t0 = time.perf_counter()
    oracle = getattr(args, "oracle", "kvm")
    spec = load_spec(args.layout)
    profile_of(oracle, args.device)  # no KVM (or no Unicorn): say so, and what works instead
    options = PlanOptions(seed=args.seed, cpl0=not args.cpl3_only)
    if args.all:  # every page gets the full set, however many there are
        options = PlanOptions(seed=args.seed, cpl0=not args.cpl3_only, full_limit=sys.maxsize)
    with (
        Progress.for_args(args.quiet) as progress,
        on_machine(spec, args.device, progress, oracle=oracle) as (
            _machine,
            built,
            verifier,
        ),
    ):
        # the tables as built, before the CPU sets A and D in them
        leaves = Leaves.scan(
            built.memory, built.p4_phys, skip_p4=verifier.skip_p4, cpu=built.spec.cpu
        )
        progress.stage(f"probing {len(leaves)} pages and the holes next to them")
        report = verifier.verify(options)
        runs = runs_of(leaves)
        verdicts, holes = run_verdicts(runs, verifier)
        head = header(built)
        layout = layout_json(built)
        names = MappingNames(built.spec).of_runs(runs)
        slot = built.spec.recursive_index
        skip = verifier.skip_p4 | ({slot} if slot is not None else set())
        levels = built.spec.cpu.levels
        tables = table_frames(built.memory, built.p4_phys, skip_p4=frozenset(skip), levels=levels)
        findings = audit(
            [r for r in runs if slot is None or not in_slot(r, slot, levels)], tables=tables
        )
        dropped_gbpage = (
            oracle == "kvm"
            and spec.name == BUILTIN
            and not spec.source
            and not any(m.size.SIZE == 1 << 30 for m in built.spec.mappings)
        )
        spec = built.spec
        profile = verifier.profile
        gbpage_leaves = sum(len(g.indices) for g in leaves.groups if g.level == 3)
    seconds = time.perf_counter() - t0
    gaps = not_verified(
        report,
        findings,
        cpl0=options.cpl0,
        dropped_gbpage=dropped_gbpage,
        gbpage_leaves=gbpage_leaves,
    )
    code, error = exit_status(report, strict=args.strict, gaps=gaps)
    if args.json:
        emit_json(
            {
                "command": "verify",
                "exit_code": code,
                "ok": report.ok,
                "oracle": oracle,
                "layout": layout,
                "runs": runs_json(runs, verdicts, names, slot, levels),
                "holes": holes.to_json(),
                "audit": [finding_json(f) for f in findings],
                "report": report.to_dict(),
                "strict": args.strict,
                "not_verified": gaps,
                "seconds": round(seconds, 4),
                **({"error": error} if error else {}),
            }
        )
        if error:
            print(f"kvmpage verify: error: {error}", file=sys.stderr)
        return code
    lines = _text(
        head=head,
        spec=spec,
        profile=profile,
        report=report,
        runs=runs,
        names=names,
        verdicts=verdicts,
        holes=holes,
        findings=findings,
        limit=args.limit,
        dropped_gbpage=dropped_gbpage,
        cpl0=options.cpl0,
    )
    if args.strict and gaps:
        lines.append(f"--strict: not verified: {'; '.join(gaps)}")
    print("\n".join(lines))
    verdict = VERDICTS[oracle][0 if report.ok else 1]
    if report.ok and code == EXIT_FAIL:
        verdict = "every probe that ran agreed, but NOT EVERYTHING WAS VERIFIED (--strict)"
    elif error:
        verdict = "NOTHING VERIFIED"
    print(f"{verdict}: {report.summary().rsplit(';', 1)[0]}; {seconds:.2f} s")
    if error:
        print(f"kvmpage verify: error: {error}", file=sys.stderr)
    return code
