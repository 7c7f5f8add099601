"""``kvmpage dump --image FILE``: the listing, the audit and the diffs of a memory image's tables.

The same listing as for a layout (runs of pages contiguous in virtual and physical address with
the same leaf flags and effective rights), with the entries the CPU faults on, the region each
run lies in (Linux's ptdump markers), whether its frames are in the image, and in JSON the exact
accessed/dirty bits of every page. ``--format ptdump`` prints Linux's own format instead.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvmpage.cli.errors import EXIT_FAIL, EXIT_OK, CliError
from kvmpage.cli.image_source import (
    context_json,
    context_lines,
    image_json,
    image_line,
    leaf_counts,
    open_source,
    parse_range,
    regions_for,
    self_slots,
)
from kvmpage.cli.output import (
    Rows,
    approx_size,
    emit_json,
    finding_json,
    findings_lines,
    format_table,
    hexa,
    run_json,
    run_row,
)
from kvmpage.cli.progress import Progress
from kvmpage.image import Image, PagingContext, open_image
from kvmpage.layout.audit import Finding, audit, kpti_findings
from kvmpage.layout.diff import Change, diff, format_diff
from kvmpage.layout.dump import Run, human_size, runs_of
from kvmpage.layout.ptdump import ptdump_lines
from kvmpage.layout.regions import Regions
from kvmpage.paging.arch import LEVEL_NAMES
from kvmpage.paging.leaves import Fault, Hole, Leaves, table_frames

KPTI = "kpti"


@dataclass
class ImageView:
    """One address space of an image: its leaves, runs, regions and table frames."""

    image: Image
    ctx: PagingContext
    leaves: Leaves
    runs: list[Run]
    regions: Regions
    tables: list[int]
    skipped: frozenset[int]
    holes: list[Hole]

    @functools.cached_property
    def in_image(self) -> list[str]:
        """Per run: ``"yes"``, ``"no"`` or ``"partly"``: whether the image holds its frames."""
        known: dict[tuple[int, int], str] = {}  # (espfix maps one frame 65,536 times)
        out = []
        for r in self.runs:
            key = (r.phys, r.page_size * r.count)
            where = known.get(key)
            if where is None:
                where = known[key] = _in_image(self.image, r)
            out.append(where)
        return out


def scan_view(
    image: Image,
    ctx: PagingContext,
    *,
    start: int = 0,
    end: int = 1 << 64,
    include_recursive: bool = False,
    holes: bool = False,
) -> ImageView:
    """Scan the tables of ``ctx`` (top-level self references skipped unless asked for)."""
    skipped = frozenset() if include_recursive else _self_slots(image, ctx)
    found: list[Hole] = []
    leaves = Leaves.scan(
        image.memory, ctx.root, cpu=ctx.cpu, start=start, end=end, skip_top=skipped,
        holes=found if holes else None,
    )  # fmt: skip
    runs = runs_of(leaves)
    tables = table_frames(image.memory, ctx.root, levels=ctx.levels)
    return ImageView(image, ctx, leaves, runs, regions_for(image, ctx, runs), tables, skipped,
                     found)  # fmt: skip


def _self_slots(image: Image, ctx: PagingContext) -> frozenset[int]:
    if not image.memory.contains(ctx.root, 4096):
        image.leaves(ctx)  # raises ImageError naming the file and CR3
    return self_slots(image, ctx)


def kpti_partner(view: ImageView) -> PagingContext | None:
    """The other half of a KPTI pair (Linux: the user PGD is the kernel PGD + 4 KiB, its
    kernel half a subset of the kernel PGD's), when the image holds one."""
    memory, root = view.image.memory, view.ctx.root
    other_root = root ^ 0x1000
    if not memory.contains(other_root, 4096):
        return None
    mine = memory.table_words(root)
    other = memory.table_words(other_root)
    user, kernel = (mine, other) if root & 0x1000 else (other, mine)
    upper = range(256, 512)
    user_k = {i for i in upper if user[i] & 1}
    kernel_k = {i for i in upper if kernel[i] & 1}
    if not user_k or not user_k < kernel_k:
        return None  # the user PGD maps a few kernel slots (entry code), the kernel PGD all
    nx = 1 << 63
    if any((user[i] ^ kernel[i]) & ~nx for i in range(256)):
        return None  # both map the same user half (the kernel's copy with NX)
    return view.ctx.with_cr3(view.ctx.cr3 ^ 0x1000)


def _in_image(image: Image, run: Run) -> str:
    memory = image.memory
    if memory.contains(run.phys, run.size):
        return "yes"
    gap = memory.present().first_gap(run.phys, run.size)
    return "no" if gap == run.phys and not memory.contains(run.phys + run.size - 1) else "partly"


def accessed_dirty(leaves: Leaves, runs: Sequence[Run]) -> list[tuple[int, int]]:
    """Per run, bit masks of its pages with A and with D set (bit ``i`` is page ``i``)."""
    out: list[tuple[int, int]] = []
    it = (g.words[i] for g in leaves.groups for i in g.indices)
    for run in runs:
        a = d = 0
        for k in range(run.count):
            raw = next(it)
            a |= (raw >> 5 & 1) << k
            d |= (raw >> 6 & 1) << k
        out.append((a, d))
    return out


def fault_json(f: Fault) -> dict[str, Any]:
    return {
        "virt": hexa(f.virt),
        "virt_end": hexa(f.virt_end - 1),
        "size": f.size,
        "level": f.level,
        "raw": hexa(f.raw),
        "entry_addr": hexa(f.entry_addr),
        "kind": f.kind,
        "reason": f.reason,
    }


def fault_line(f: Fault, levels: int) -> str:
    name = LEVEL_NAMES[f.level] if f.level < levels else LEVEL_NAMES[levels]
    return (
        f"{f.virt:#018x}-{f.virt_end - 1:#018x} {human_size(f.size):>6}  FAULT {name} entry at "
        f"{f.entry_addr:#x} = {f.raw:#x}: {f.reason} (every access here faults)"
    )


def view_runs_json(view: ImageView) -> Rows:
    """The ``runs`` of the image dump document, encoded (`kvmpage.cli.output.Rows`)."""
    ad = accessed_dirty(view.leaves, view.runs)
    out = Rows()
    name_of = view.regions.name_of
    quoted: dict[str, str] = {}
    for r, (a, d), where in zip(view.runs, ad, view.in_image, strict=True):
        region = name_of(r.virt)
        q = quoted.get(region)
        if q is None:
            q = quoted[region] = json.dumps(region)
        out.append(
            run_row(r, (), f', "region": {q}, "in_image": "{where}", "accessed": "{a:#x}", '
                           f'"dirty": "{d:#x}"')
        )  # fmt: skip
    return out


def audit_view(view: ImageView, allowed: frozenset[str]) -> list[Finding]:
    """The audit of one address space, with the KPTI finding when it has a user half."""
    findings = audit(view.runs, tables=view.tables)
    partner = kpti_partner(view)
    if partner is not None:
        user_ctx = view.ctx if view.ctx.root & 0x1000 else partner
        if user_ctx is view.ctx:
            user_runs: list[Run] = view.runs
        else:
            user_runs = scan_view(view.image, user_ctx).runs
        findings += kpti_findings(user_runs)
    return [f for f in findings if f.kind not in allowed]


def _other(args: argparse.Namespace, view: ImageView) -> tuple[ImageView, str] | None:
    """The address space ``--diff`` / ``--diff-cr3`` compares with."""
    if args.diff_cr3 is not None:
        if args.diff_cr3 == KPTI:
            partner = kpti_partner(view)
            if partner is None:
                raise CliError(
                    f"--diff-cr3 kpti: no KPTI pair at CR3 {view.ctx.cr3:#x} (the table 4 KiB "
                    "beside it is not a Linux user/kernel PGD partner)"
                )
            ctx = partner
        else:
            ctx = view.ctx.with_cr3(_hex(args.diff_cr3))
        return scan_view(view.image, ctx), f"CR3 {ctx.cr3:#x}"
    if args.diff is not None:
        other_image = open_image(args.diff)
        try:
            ctx = other_image.context(cpu=args.cpu)
            return scan_view(other_image, ctx), args.diff
        except BaseException:
            other_image.close()
            raise
    return None


def _hex(text: str) -> int:
    try:
        return int(text.replace("_", ""), 16)
    except ValueError:
        raise CliError(f"--diff-cr3: expected a hex CR3 or 'kpti', got {text!r}") from None


def cmd_dump_image(args: argparse.Namespace) -> int:
    """``kvmpage dump --image FILE``."""
    start, end = parse_range(args.range) if args.range else (0, 1 << 64)
    allowed = frozenset(args.allow or ())
    image, ctx = open_source(args)
    other: tuple[ImageView, str] | None = None
    try:
        with Progress.for_args(args.quiet) as progress:
            progress.stage(f"scanning the tables at {ctx.root:#x}")
            view = scan_view(image, ctx, start=start, end=end,
                             include_recursive=args.include_recursive,
                             holes=args.format == "ptdump")  # fmt: skip
            progress.stage(f"auditing {len(view.runs)} runs")
            findings = audit_view(view, allowed)
            other = _other(args, view)
        changes: list[Change] | None = diff(view.runs, other[0].runs) if other else None
        code = EXIT_FAIL if (findings and args.strict) or changes else EXIT_OK
        if args.json:
            doc: dict[str, Any] = {
                "command": "dump",
                "exit_code": code,
                "image": image_json(image),
                "context": context_json(ctx),
                "range": None if not args.range else {"start": hexa(start), "end": hexa(end - 1)},
                "runs": view_runs_json(view),
                "faults": [fault_json(f) for f in view.leaves.faults],
                "leaves": {str(k): v for k, v in sorted(view.leaves.count_by_size().items())},
                "mapped_bytes": sum(r.size for r in view.runs),
                "skipped_slots": sorted(view.skipped),
                "unplaced_regions": view.regions.unplaced,
                "audit": [finding_json(f) for f in findings],
            }
            if changes is not None and other is not None:
                doc["diff"] = {
                    "other": {"name": other[1], "context": context_json(other[0].ctx)},
                    "changes": [_change_json(c) for c in changes],
                }
            emit_json(doc)
            return code
        _print_text(args, view, findings, changes, other)
        return code
    finally:
        if other is not None and other[0].image is not image:
            other[0].image.close()
        image.close()


def _change_json(c: Change) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "virt": hexa(c.virt),
        "virt_end": hexa(c.virt_end - 1),
        "size": c.virt_end - c.virt,
        "fields": list(c.fields),
        "old": None if c.old is None else run_json(c.old, []),
        "new": None if c.new is None else run_json(c.new, []),
    }


def _print_text(
    args: argparse.Namespace,
    view: ImageView,
    findings: list[Finding],
    changes: list[Change] | None,
    other: tuple[ImageView, str] | None,
) -> None:
    image, ctx, leaves = view.image, view.ctx, view.leaves
    head = [image_line(image), *context_lines(ctx)]
    if args.format == "ptdump":
        print("\n".join(ptdump_lines(leaves, view.holes, view.regions, ctx.levels)))
        return
    print("\n".join(head))
    names = [
        [view.regions.name_of(r.virt)] + ([] if where == "yes" else [f"frames {where} in image"])
        for r, where in zip(view.runs, view.in_image, strict=True)
    ]
    lines = format_table(view.runs, names)
    lines[0] = lines[0].replace("  mapping", "  region")
    print("\n".join(_with_faults(lines, view.runs, leaves.faults, ctx.levels)))
    total = sum(r.size for r in view.runs)
    absent = sum(1 for where in view.in_image if where != "yes")
    summary = f"{len(view.runs)} runs, {leaf_counts(leaves)}, {approx_size(total)} mapped"
    if leaves.faults:
        summary += f"; {len(leaves.faults)} entries the CPU faults on (FAULT lines)"
    if absent:
        summary += f"; {absent} runs map frames the image does not hold"
    print(summary + " (software walk; no hardware check)")
    for slot in sorted(view.skipped):
        print(f"top-level slot {slot} points back at the top-level table (a recursive slot): "
              "not listed (--include-recursive lists the tables seen through it)")  # fmt: skip
    if view.regions.unplaced:
        print(f"regions not placed (KASLR, not in VMCOREINFO): {', '.join(view.regions.unplaced)}")
    print("\n".join(findings_lines(findings, args.limit)))
    if changes is not None and other is not None:
        print()
        print("\n".join(format_diff(changes, f"CR3 {ctx.cr3:#x}", other[1])))


def _with_faults(
    lines: list[str], runs: Sequence[Run], faults: Sequence[Fault], levels: int
) -> list[str]:
    """The table lines with a FAULT line for each fault, in virtual order."""
    if not faults:
        return lines
    out = [lines[0]]
    k = 0
    for run, line in zip(runs, lines[1:], strict=True):
        while k < len(faults) and faults[k].virt < run.virt:
            out.append(fault_line(faults[k], levels))
            k += 1
        out.append(line)
    out += [fault_line(f, levels) for f in faults[k:]]
    return out
