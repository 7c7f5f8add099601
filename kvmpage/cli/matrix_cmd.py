"""``kvmpage matrix``: the permission matrix on this host (`kvmpage.matrix`), or ``--merge`` of
several shards' ``--json`` reports into one."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmpage.cli.errors import EXIT_ERROR, CliError
from kvmpage.cli.output import emit_json
from kvmpage.cli.progress import Progress

if TYPE_CHECKING:
    from kvmpage.matrix import Selection

#: Runs of at least this many combinations use several jobs unless ``--jobs`` says otherwise.
AUTO_JOBS_FROM = 100_000
#: The permission model the command checks against (None: `kvmpage.paging.access.evaluate`).
#: Tests set a deliberately wrong one to check that a disagreement reaches the output.
MODEL: Any = None


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N), 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CliError(f"--shard {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise CliError(f"--shard {text}: K must be between 1 and N")
    return k, n


def default_jobs(selection: Selection) -> int:
    """Without ``--jobs``: one process for a short run (starting more costs about a second),
    else one per CPU, at most 4 (each job is a VM with its own vCPU and a host thread)."""
    if selection.count() < AUTO_JOBS_FROM:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def cmd_matrix(args: argparse.Namespace) -> int:
    """``kvmpage matrix``."""
    if args.merge:
        return _merge(args)
    from kvmpage.matrix import Selection, run_matrix
    from kvmpage.matrix.document import format_text, to_json

    if args.jobs is not None and args.jobs < 1:
        raise CliError("--jobs must be at least 1")
    if args.sample is not None and args.sample < 1:
        raise CliError("--sample must be at least 1")
    selection = Selection(
        "full" if args.full else "sample",
        args.sample if args.sample is not None else 20000,
        args.seed,
        parse_shard(args.shard) if args.shard else (1, 1),
    )
    with Progress.for_args(args.quiet) as progress:
        progress.stage(f"matrix: {selection.describe()}: probing the host's paging features")
        start = time.monotonic()

        def show(done: int, total: int, disagree: int) -> None:
            elapsed = max(time.monotonic() - start, 1e-9)
            rate = done / elapsed
            eta = f", {max(total - done, 0) / rate:,.0f} s to go" if rate > 0 else ""
            bad = f", {disagree:,} DISAGREEMENTS" if disagree else ""
            progress.stage(f"matrix: {done:,} of {total:,} combinations, {rate:,.0f}/s{eta}{bad}")

        result = run_matrix(
            selection, device=args.device, jobs=args.jobs or default_jobs(selection),
            model=MODEL, limit=args.limit,
            progress=show,
        )  # fmt: skip
    code = result.exit_code
    if args.json:
        emit_json(to_json(result, code))
    else:
        print("\n".join(format_text(result, shown=args.show)))
    return code


def _merge(args: argparse.Namespace) -> int:
    from kvmpage.matrix.document import MergeError, merge, merged_exit_code, merged_text

    if args.full or args.sample is not None or args.shard:
        raise CliError("--merge combines reports: it takes no --sample, --full or --shard")
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in args.merge:
        try:
            docs.append((name, json.loads(Path(name).read_text())))
        except (OSError, ValueError) as e:
            raise CliError(f"{name}: cannot read a JSON report: {e}") from None
    try:
        doc = merge(docs, args.limit)
    except MergeError as e:
        raise CliError(str(e)) from None
    code = merged_exit_code(doc, [d for _, d in docs])
    if code == EXIT_ERROR:
        missing = doc["shards"]["missing"]
        doc["error"] = (
            f"shard(s) {', '.join(map(str, missing))} of {doc['shards']['count']} missing"
            if missing
            else "a merged part could not run"
        )
        print(f"kvmpage matrix: error: {doc['error']}", file=sys.stderr)
    if args.json:
        emit_json({"command": "matrix", "exit_code": code, **doc})
    else:
        print("\n".join(merged_text(doc, shown=args.show)))
    return code
