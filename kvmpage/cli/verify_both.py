"""``kvmpage verify --oracle both``: the same layout, the same probes, on KVM and on QEMU's TCG.

The layout is built in a KVM machine and in a TCG machine (same memory size, same agent slot:
the same physical addresses), verified on each, and the two runs are compared probe by probe
(`kvmpage.verify.oracles`). The report is the usual one with the columns of both oracles side
by side and one more, ``kvm-vs-tcg``: ``ok`` when both gave the same result on every probe of
the run. A difference between them is a finding (exit 1) even when one of them agrees with
the software. The built-in layout keeps its 1 GiB page only when both oracles can verify it.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from kvmpage.cli.common import EXIT_FAIL, EXIT_OK, CliError, load_spec, on_machine
from kvmpage.cli.oracles import profile_of
from kvmpage.cli.output import (
    BUILTIN,
    MappingNames,
    emit_json,
    finding_json,
    header,
    layout_json,
)
from kvmpage.cli.progress import Progress
from kvmpage.cli.verify_cmd import VERDICTS, _text, in_slot, runs_json
from kvmpage.layout.audit import audit
from kvmpage.layout.dump import runs_of
from kvmpage.paging.leaves import Leaves
from kvmpage.verify import PlanOptions, verdicts_of
from kvmpage.verify.oracles import cross_check, merge

NAMES = ("kvm", "tcg")


def cmd_verify_both(args: argparse.Namespace) -> int:
    """``kvmpage verify --oracle both``: the same probes on KVM and on TCG, side by side."""
    if args.strict or args.all:  # refused rather than ignored
        raise CliError("--strict and --all check one oracle: give --oracle kvm or tcg")
    t0 = time.perf_counter()
    spec = load_spec(args.layout)
    profiles = {name: profile_of(name, args.device) for name in NAMES}
    gbpages = all(p.supports("1gib-pages") for p in profiles.values())
    options = PlanOptions(seed=args.seed, cpl0=not args.cpl3_only)
    with ExitStack() as stack:
        progress = stack.enter_context(Progress.for_args(args.quiet))
        sides = {
            name: stack.enter_context(
                on_machine(spec, args.device, progress, oracle=name, gbpages=gbpages)
            )
            for name in NAMES
        }
        _, built, first = sides["kvm"]
        leaves = Leaves.scan(built.memory, built.p4_phys, skip_p4=first.skip_p4, cpu=built.spec.cpu)
        reports = {}
        for name, (_, _, verifier) in sides.items():
            progress.stage(f"probing {len(leaves)} pages on {name}")
            verifier.keep_results = True  # every probe's result, to pair them across oracles
            reports[name] = verifier.verify(options)
        cross = cross_check(sides["kvm"][2], sides["tcg"][2], names=NAMES)
        report = merge(reports, cross)
        runs = runs_of(leaves)
        checks = [c for _, _, v in sides.values() for c in v.last_checks] + cross.checks
        verdicts, holes = verdicts_of(runs, checks)
        head = header(built)
        layout = layout_json(built)
        names = MappingNames(built.spec).of_runs(runs)
        slot = built.spec.recursive_index
        levels = built.spec.cpu.levels
        findings = audit([r for r in runs if slot is None or not in_slot(r, slot, levels)])
        dropped_gbpage = spec.name == BUILTIN and not spec.source and not gbpages
        spec = built.spec
    seconds = time.perf_counter() - t0
    code = EXIT_OK if report.ok else EXIT_FAIL
    if args.json:
        emit_json(
            {
                "command": "verify",
                "exit_code": code,
                "ok": report.ok,
                "oracle": "both",
                "layout": layout,
                "runs": runs_json(runs, verdicts, names, slot, levels),
                "holes": holes.to_json(),
                "audit": [finding_json(f) for f in findings],
                "report": report.to_dict(),
                "oracles_compared": cross.to_dict(),
                "seconds": round(seconds, 4),
            }
        )
        return code
    lines = _text(
        head=head,
        spec=spec,
        profile=list(profiles.values()),
        report=report,
        runs=runs,
        names=names,
        verdicts=verdicts,
        holes=holes,
        findings=findings,
        limit=args.limit,
        dropped_gbpage=dropped_gbpage,
    )
    lines.append(
        f"KVM vs TCG: {cross.compared} probes compared, {len(cross.findings)} differ"
        + (
            f", {cross.not_compared} not compared (their predictions differ: the two CPUs differ)"
            if cross.not_compared
            else ""
        )
    )
    print("\n".join(lines))
    verdict = VERDICTS["both"][0 if report.ok else 1]
    print(f"{verdict}: {report.summary().rsplit(';', 1)[0]}; {seconds:.2f} s")
    return code
