"""``kvmpage dump [LAYOUT]``: a ptdump-style listing, the audit, and ``--diff OTHER``.

Software only (no KVM needed): the layout is built in a plain memory and scanned with hardware
semantics. Runs are coalesced by effective attributes; the audit also catches a frame that is
writable through one address and executable through another, and kernel-only memory that some
other address exposes to user mode.
"""

from __future__ import annotations

import argparse
from typing import Any

from kvmpage.cli.common import EXIT_FAIL, EXIT_OK, load_spec
from kvmpage.cli.guard import printable
from kvmpage.cli.output import (
    MappingNames,
    approx_size,
    emit_json,
    finding_json,
    findings_lines,
    format_table,
    header,
    hexa,
    layout_json,
    run_json,
)
from kvmpage.cli.placement import alloc_end
from kvmpage.cli.progress import Progress
from kvmpage.layout.audit import audit
from kvmpage.layout.diff import Change, diff, format_diff
from kvmpage.layout.dump import Run, runs_of
from kvmpage.layout.spec import BuiltLayout, LayoutSpec, build
from kvmpage.paging.leaves import Leaves, table_frames


def _runs(built: BuiltLayout) -> tuple[list[Run], list[int]]:
    """The runs outside the agent's and the recursive slot, and the page-table frames."""
    spec = built.spec
    skip = set(spec.reserved_p4)
    if spec.recursive_index is not None:
        skip.add(spec.recursive_index)
    leaves = Leaves.scan(built.memory, built.p4_phys, skip_p4=frozenset(skip), cpu=spec.cpu)
    tables = table_frames(
        built.memory, built.p4_phys, skip_p4=frozenset(skip), levels=spec.cpu.levels
    )
    return runs_of(leaves), tables


def snapshot(
    spec: LayoutSpec,
) -> tuple[list[Run], list[list[str]], str, dict[str, Any], list[int]]:
    """Build ``spec`` in a fresh memory: its runs, their mapping names, header line, layout JSON
    and page-table frames."""
    built = build(spec, alloc_end=alloc_end(spec))
    try:
        runs, tables = _runs(built)
        names = MappingNames(spec).of_runs(runs)
        return runs, names, header(built), layout_json(built), tables
    finally:
        built.close()


def _change_json(c: Change, old: MappingNames, new: MappingNames) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "virt": hexa(c.virt),
        "virt_end": hexa(c.virt_end - 1),
        "size": c.virt_end - c.virt,
        "fields": list(c.fields),
        "old": None if c.old is None else run_json(c.old, old.of(c.old.virt, c.old.virt_end)),
        "new": None if c.new is None else run_json(c.new, new.of(c.new.virt, c.new.virt_end)),
    }


def cmd_dump(args: argparse.Namespace) -> int:
    """``kvmpage dump [LAYOUT] [--diff OTHER]``."""
    spec = load_spec(args.layout)
    # both layouts are read and checked before either is built
    other_spec = load_spec(args.diff) if args.diff is not None else spec
    changes: list[Change] | None = None
    other: dict[str, Any] | None = None
    with Progress.for_args(args.quiet) as progress:
        progress.stage(f"building and scanning {spec.source or 'the built-in layout'}")
        runs, names, head, layout, tables = snapshot(spec)
        progress.stage(f"auditing {len(runs)} runs")
        allowed = frozenset(args.allow or ())
        findings = [f for f in audit(runs, tables=tables) if f.kind not in allowed]
        if args.diff is not None:
            progress.stage(f"building and scanning {other_spec.source or 'the built-in layout'}")
            other_runs, _, _, other, _ = snapshot(other_spec)
            changes = diff(runs, other_runs)
    code = EXIT_OK
    if (findings and args.strict) or changes:
        code = EXIT_FAIL
    if args.json:
        doc: dict[str, Any] = {
            "command": "dump",
            "exit_code": code,
            "layout": layout,
            "runs": [run_json(r, n) for r, n in zip(runs, names, strict=True)],
            "mapped_bytes": sum(r.size for r in runs),
            "audit": [finding_json(f) for f in findings],
        }
        if changes is not None and other is not None:
            a, b = MappingNames(spec), MappingNames(other_spec)
            doc["diff"] = {"other": other, "changes": [_change_json(c, a, b) for c in changes]}
        emit_json(doc)
        return code
    print(head)
    print("\n".join(format_table(runs, names)))
    total = sum(r.size for r in runs)
    print(f"{len(runs)} runs, {approx_size(total)} mapped (software walk; no hardware check)")
    print("\n".join(findings_lines(findings, args.limit)))
    if changes is not None and other is not None:
        print()
        old, new = printable(layout["source"]), printable(other["source"])
        print("\n".join(format_diff(changes, old, new)))
    return code
