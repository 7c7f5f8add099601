"""``kvmpage verify --image FILE``: a real kernel's own tables, checked on an MMU.

The image's physical memory is laid out in a guest as the image has it, its tables copied in
byte for byte (`kvmpage.verify.image_guest`), CR3 loaded, and the image's own mappings probed
through its own tables: by default a sample that covers every run (a CPL3 read of its first
page), every user page (a CPL3 read, on the MMU), and every distinct level, flags and rights
(read, write and fetch at CPL3 and CPL0); ``--all-leaves`` probes every leaf fully.

``--oracle`` says which MMU: ``kvm`` (the CPU, the default), ``tcg`` (QEMU's TCG MMU through
Unicorn: also 5-level images, which KVM here cannot run) or ``both``: the same guest on each,
the same probes, compared probe by probe as ``verify --oracle both`` does for a layout. An
oracle that cannot run the image (KVM and a 5-level image) is named with the reason in the
report and in ``not_verified``, never passed over in silence. The report is ``verify``'s: the
runs with a verdict per oracle, the disagreements in full, what was not verified and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, cast

from kvmpage.cli import common
from kvmpage.cli.coverage import exit_status, not_verified
from kvmpage.cli.errors import EXIT_FAIL, CliError
from kvmpage.cli.image_dump import ImageView, scan_view
from kvmpage.cli.image_source import (
    context_json,
    context_lines,
    image_json,
    image_line,
    leaf_counts,
    open_source,
)
from kvmpage.cli.output import emit_json, finding_json, run_json
from kvmpage.cli.progress import Progress
from kvmpage.cli.verify_cmd import VERDICTS, _text
from kvmpage.image import Image, PagingContext
from kvmpage.layout.audit import audit
from kvmpage.layout.dump import Run, runs_of
from kvmpage.layout.spec import LayoutSpec
from kvmpage.machine import HostProfile
from kvmpage.paging.arch import CpuState
from kvmpage.paging.leaves import Leaves
from kvmpage.verify import PlanOptions, Report, RunVerdict, Verifier, verdicts_of
from kvmpage.verify.image_guest import (
    CannotVerify,
    ImageGuest,
    ImageOracle,
    image_on_machine,
    plan_guest,
)
from kvmpage.verify.oracles import CrossCheck, cross_check, merge

NAMES = ("kvm", "tcg")


@dataclass(frozen=True)
class _Shape:
    """What the shared report text reads of a layout, for an image."""

    cpu: CpuState
    recursive_index: int | None = None
    kind: str = "image"


@dataclass
class _Outcome:
    """What the oracles found, ready for the report."""

    report: Report
    profiles: list[HostProfile]
    leaves: Leaves
    runs: list[Run]
    verdicts: list[RunVerdict]
    holes: RunVerdict
    guest_line: str
    guest_json: dict[str, Any]
    cpu: CpuState
    ran: list[str]  #: the oracles that ran, by name (``kvm``, ``tcg``)
    cross: CrossCheck | None = None
    #: oracles asked for that could not run the image: name -> why
    not_run: dict[str, str] = field(default_factory=dict)


def _guest_line(guest: ImageGuest) -> str:
    pl = guest.machine.placement
    start, end = pl.reserved
    return (
        f"guest: the image's RAM at its own addresses, {guest.tables} page-table pages copied; "
        f"agent in top-level slot {guest.agent_slot} ({pl.base:#x}), its memory at "
        f"{start:#x}-{end - 1:#x}"
    )


def _guest_json(guest: ImageGuest) -> dict[str, Any]:
    pl = guest.machine.placement
    cpu = guest.cpu
    return {
        "agent_slot": guest.agent_slot,
        "agent_memory": {"start": f"{pl.reserved[0]:#x}", "end": f"{pl.reserved[1] - 1:#x}"},
        "tables_copied": guest.tables,
        "cpu": {"wp": cpu.wp, "smep": cpu.smep, "smap": cpu.smap, "nxe": cpu.nxe, "la57": cpu.la57},
        "unverified": guest.unverified,
    }


def image_oracles(
    name: str, device: str, ctx: PagingContext
) -> tuple[list[ImageOracle], dict[str, str]]:
    """The oracles ``--oracle name`` runs the image on, and those it asked for that cannot run
    it (name -> why). Nothing here falls back silently: with ``kvm`` or ``tcg`` alone, an oracle
    that cannot run the image is an error; with ``both`` the other one runs and the report
    names the missing one."""
    from kvmpage.cli.oracles import kvm_missing, tcg_problem
    from kvmpage.machine import KvmError
    from kvmpage.verify.image_guest import kvm_oracle, tcg_oracle

    wanted = NAMES if name == "both" else (name,)
    oracles: list[ImageOracle] = []
    not_run: dict[str, str] = {}
    for one in wanted:
        if one == "tcg":
            problem = tcg_problem()
            if problem is not None:
                raise CliError(f"--oracle {name}: {problem}")
            oracles.append(tcg_oracle())
            continue
        try:
            kvm = kvm_oracle(device)
        except KvmError as e:
            raise kvm_missing(e) from e
        if ctx.cpu.la57 and not kvm.profile.supports("la57") and name == "both":
            not_run["kvm"] = (
                "the image uses 5-level paging (CR4.LA57), which KVM on this host cannot run "
                "(kvmpage host: la57)"
            )
            continue
        oracles.append(kvm)
    return oracles, not_run


def _run(
    args: argparse.Namespace,
    image: Image,
    ctx: PagingContext,
    view: ImageView,
    options: PlanOptions,
    progress: Progress,
) -> _Outcome:
    """Start a guest per oracle (one plan: the same layout on each), verify on each, and with
    two oracles compare them. Every machine is closed on every path."""
    oracles, not_run = image_oracles(args.oracle, args.device, ctx)
    used = [(r.phys, r.phys + r.size) for r in view.runs]
    plan = plan_guest(image, ctx, [o.profile for o in oracles], skip_top=view.skipped, used=used)
    extra = {} if common.PREDICTOR is None else {"predictor": common.PREDICTOR}
    pair = len(oracles) > 1
    with ExitStack() as stack:
        sides: list[tuple[ImageGuest, Verifier]] = []
        for oracle in oracles:
            progress.stage(f"starting a {oracle.name} guest with the image's memory")
            guest = stack.enter_context(image_on_machine(image, ctx, plan, oracle))
            verifier = Verifier(
                None, guest.machine, root=guest.root, skip_top=guest.skip_top, cpu=guest.cpu,
                keep_results=pair, **extra,
            )  # fmt: skip
            sides.append((guest, verifier))
        first, first_verifier = sides[0]
        # the tables as copied, before the CPU sets A and D in them
        leaves = Leaves.scan(
            first.machine.memory, first.root, skip_p4=first_verifier.skip_p4, cpu=first.cpu
        )
        reports: dict[str, Report] = {}
        for guest, verifier in sides:
            progress.stage(f"probing {len(leaves)} pages of the image on {guest.oracle}")
            reports[guest.oracle] = verifier.verify(options)
        runs = runs_of(leaves)
        cross = None
        if pair:
            cross = cross_check(sides[0][1], sides[1][1], names=NAMES)
            report = merge(reports, cross)
            checks = [c for _, v in sides for c in v.last_checks] + cross.checks
        else:
            report = reports[first.oracle]
            checks = first_verifier.last_checks
        verdicts, holes = verdicts_of(runs, checks)
        outcome = _Outcome(
            report, [v.profile for _, v in sides], leaves, runs, verdicts, holes,
            _guest_line(first), _guest_json(first), first.cpu, [g.oracle for g, _ in sides],
            cross, not_run,
        )  # fmt: skip
    for note in plan.unverified:
        report.unverified[note] = 1
    return outcome


def cmd_verify_image(args: argparse.Namespace) -> int:
    """``kvmpage verify --image FILE [--oracle kvm|tcg|both]``."""
    t0 = time.perf_counter()
    if getattr(args, "layout", None) is not None:
        raise CliError(f"give either LAYOUT ({args.layout}) or --image, not both")
    options = PlanOptions(
        seed=args.seed,
        cpl0=not args.cpl3_only,
        full_limit=(1 << 62) if args.all_leaves else PlanOptions.full_limit,
        image_sample=True,
        every_page=False,
    )
    image, ctx = open_source(args)
    try:
        with Progress.for_args(args.quiet) as progress:
            progress.stage(f"scanning the tables at {ctx.root:#x}")
            view = scan_view(image, ctx)
            try:
                out = _run(args, image, ctx, view, options, progress)
            except CannotVerify as e:
                raise CliError(f"{image.path}: cannot verify: {e}") from None
        return _print(args, image, ctx, view, options, out, time.perf_counter() - t0)
    finally:
        image.close()


def _print(
    args: argparse.Namespace,
    image: Image,
    ctx: PagingContext,
    view: ImageView,
    options: PlanOptions,
    out: _Outcome,
    seconds: float,
) -> int:
    """The report (text or JSON) and the exit status."""
    report, runs, leaves = out.report, out.runs, out.leaves
    findings = audit(runs, tables=view.tables)
    names = [[view.regions.name_of(r.virt)] for r in runs]
    gaps = not_verified(
        report, findings, cpl0=options.cpl0, dropped_gbpage=False,
        gbpage_leaves=sum(len(g.indices) for g in leaves.groups if g.level == 3),
    )  # fmt: skip
    gaps += [f"oracle {name} not run: {why}" for name, why in out.not_run.items()]
    code, error = exit_status(report, strict=args.strict, gaps=gaps)
    if args.json:
        emit_json(
            {
                "command": "verify",
                "exit_code": code,
                "ok": report.ok,
                "oracle": args.oracle,
                "image": image_json(image),
                "context": context_json(ctx),
                "guest": out.guest_json,
                "sample": "every leaf" if args.all_leaves else "default",
                "runs": [
                    {**run_json(r, ()), **v.to_json(), "region": n[0]}
                    for r, v, n in zip(runs, out.verdicts, names, strict=True)
                ],
                "holes": out.holes.to_json(),
                "audit": [finding_json(f) for f in findings],
                "report": report.to_dict(),
                **({} if out.cross is None else {"oracles_compared": out.cross.to_dict()}),
                "oracles_not_run": out.not_run,
                "strict": args.strict,
                "not_verified": gaps,
                "seconds": round(seconds, 4),
                **({"error": error} if error else {}),
            }
        )
        if error:
            print(f"kvmpage verify: error: {error}", file=sys.stderr)
        return code
    head = "\n".join(
        [image_line(image), *context_lines(ctx), out.guest_line, f"leaves: {leaf_counts(leaves)}"]
    )
    lines = _text(
        head=head,
        spec=cast(LayoutSpec, _Shape(out.cpu)),
        profile=out.profiles[0] if len(out.profiles) == 1 else out.profiles,
        report=report,
        runs=runs,
        names=names,
        verdicts=out.verdicts,
        holes=out.holes,
        findings=findings,
        limit=args.limit,
        dropped_gbpage=False,
        cpl0=options.cpl0,
    )
    if out.cross is not None:
        cross = out.cross
        lines.append(
            f"KVM vs TCG: {cross.compared} probes compared, {len(cross.findings)} differ"
            + (
                f", {cross.not_compared} not compared (only one oracle ran them, or the two CPUs "
                "predict differently)"
                if cross.not_compared
                else ""
            )
        )
    lines += [f"oracle {name}: NOT RUN: {why}" for name, why in out.not_run.items()]
    print("\n".join(lines).replace("  mapping\n", "  region\n", 1))
    which = "every leaf (--all)" if args.all_leaves else "default (--all: every leaf)"
    print(f"sample: {which}: {report.coverage.strategy}")
    if args.strict and gaps and report.ok:
        print(f"--strict: not verified: {'; '.join(gaps)}")
    verdict = VERDICTS["both" if len(out.ran) > 1 else out.ran[0]][0 if report.ok else 1]
    if report.ok and code == EXIT_FAIL:
        verdict = "every probe that ran agreed, but NOT EVERYTHING WAS VERIFIED (--strict)"
    elif error:
        verdict = "NOTHING VERIFIED"
    missing = "".join(f" ({name.upper()} NOT RUN)" for name in out.not_run)
    print(f"{verdict}{missing}: {report.summary().rsplit(';', 1)[0]}; {seconds:.2f} s")
    if error:
        print(f"kvmpage verify: error: {error}", file=sys.stderr)
    return code
