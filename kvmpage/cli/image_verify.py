"""``kvmpage verify --image FILE``: a real kernel's own tables, checked on the CPU.

The image's physical memory is laid out in a KVM guest as the image has it, its tables copied
in byte for byte (`kvmpage.verify.image_guest`), CR3 loaded, and the image's own mappings
probed through its own tables: by default a sample that covers every run (a CPL3 read of its
first page), every user page (a CPL3 read, on the MMU), and every distinct level, flags and
rights (read, write and fetch at CPL3 and CPL0); ``--all-leaves`` probes every leaf fully. The
report is ``verify``'s: the runs with a verdict per oracle, the disagreements in full, what
was not verified and why.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, cast

from kvmpage.cli import common
from kvmpage.cli.coverage import not_verified
from kvmpage.cli.errors import EXIT_FAIL, EXIT_OK, CliError
from kvmpage.cli.image_dump import scan_view
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
from kvmpage.cli.verify_cmd import _text
from kvmpage.layout.audit import audit
from kvmpage.layout.dump import runs_of
from kvmpage.layout.spec import LayoutSpec
from kvmpage.paging.arch import CpuState
from kvmpage.paging.leaves import Leaves
from kvmpage.verify import PlanOptions, Verifier, run_verdicts
from kvmpage.verify.image_guest import CannotVerify, ImageGuest, image_on_machine


@dataclass(frozen=True)
class _Shape:
    """What the shared report text reads of a layout, for an image."""

    cpu: CpuState
    recursive_index: int | None = None
    kind: str = "image"


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
        "cpu": {"wp": cpu.wp, "smep": cpu.smep, "smap": cpu.smap, "nxe": cpu.nxe},
        "unverified": guest.unverified,
    }


def cmd_verify_image(args: argparse.Namespace) -> int:
    """``kvmpage verify --image FILE``."""
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
            used = [(r.phys, r.phys + r.size) for r in view.runs]
            progress.stage("starting a guest with the image's memory")
            try:
                with image_on_machine(
                    image, ctx, device=args.device, skip_top=view.skipped, used=used
                ) as guest:
                    extra = {} if common.PREDICTOR is None else {"predictor": common.PREDICTOR}
                    verifier = Verifier(
                        None, guest.machine, root=guest.root, skip_top=guest.skip_top,
                        cpu=guest.cpu, **extra,
                    )  # fmt: skip
                    # the tables as copied, before the CPU sets A and D in them
                    leaves = Leaves.scan(
                        guest.machine.memory, guest.root, skip_p4=verifier.skip_p4, cpu=guest.cpu
                    )
                    progress.stage(f"probing {len(leaves)} pages of the image")
                    report = verifier.verify(options)
                    runs = runs_of(leaves)
                    verdicts, holes = run_verdicts(runs, verifier)
                    profile = verifier.profile
                    guest_json = _guest_json(guest)
                    guest_line = _guest_line(guest)
                    run_cpu = guest.cpu
            except CannotVerify as e:
                raise CliError(f"{image.path}: cannot verify: {e}") from None
            for note in guest_json["unverified"]:
                report.unverified[note] = 1
        findings = audit(runs, tables=view.tables)
        regions = view.regions
        names = [[regions.name_of(r.virt)] for r in runs]
        seconds = time.perf_counter() - t0
        gaps = not_verified(
            report, findings, cpl0=options.cpl0, dropped_gbpage=False,
            gbpage_leaves=sum(len(g.indices) for g in leaves.groups if g.level == 3),
        )  # fmt: skip
        code = EXIT_OK if report.ok else EXIT_FAIL
        if report.ok and args.strict and gaps:
            code = EXIT_FAIL
        if args.json:
            emit_json(
                {
                    "command": "verify",
                    "exit_code": code,
                    "ok": report.ok,
                    "image": image_json(image),
                    "context": context_json(ctx),
                    "guest": guest_json,
                    "sample": "every leaf" if args.all_leaves else "default",
                    "runs": [
                        {**run_json(r, ()), **v.to_json(), "region": n[0]}
                        for r, v, n in zip(runs, verdicts, names, strict=True)
                    ],
                    "holes": holes.to_json(),
                    "audit": [finding_json(f) for f in findings],
                    "report": report.to_dict(),
                    "strict": args.strict,
                    "not_verified": gaps,
                    "seconds": round(seconds, 4),
                }
            )
            return code
        head = "\n".join(
            [image_line(image), *context_lines(ctx), guest_line, f"leaves: {leaf_counts(leaves)}"]
        )
        lines = _text(
            head=head,
            spec=cast(LayoutSpec, _Shape(run_cpu)),
            profile=profile,
            report=report,
            runs=runs,
            names=names,
            verdicts=verdicts,
            holes=holes,
            findings=findings,
            limit=args.limit,
            dropped_gbpage=False,
            cpl0=options.cpl0,
        )
        print("\n".join(lines).replace("  mapping\n", "  region\n", 1))
        which = "every leaf (--all)" if args.all_leaves else "default (--all: every leaf)"
        print(f"sample: {which}: {report.coverage.strategy}")
        if args.strict and gaps and report.ok:
            print(f"--strict: not verified: {'; '.join(gaps)}")
        verdict = "hardware agrees" if report.ok else "HARDWARE DISAGREES"
        if report.ok and code == EXIT_FAIL:
            verdict = "every probe that ran agreed, but NOT EVERYTHING WAS VERIFIED (--strict)"
        print(f"{verdict}: {report.summary().rsplit(';', 1)[0]}; {seconds:.2f} s")
        return code
    finally:
        image.close()
