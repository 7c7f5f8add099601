"""``kvmpage fuzz``: the differential campaign (`kvmpage.verify.fuzz`) from the command line.

Random layouts and operation sequences over every mapper, each step verified on KVM; the seed
is printed first so any run can be repeated, and a disagreeing case is shrunk and saved as a
layout file. The reproducer directory is checked before the campaign starts, and a
disagreement is printed in full whether or not its reproducer could be saved. A campaign that
made no probe (the time ran out before the first case) is not a pass: exit status 2.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

from kvmpage.cli.errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK, CliError
from kvmpage.cli.guard import printable
from kvmpage.cli.output import emit_json
from kvmpage.verify.fuzz import CampaignResult, Failure


def check_save_dir(directory: Path) -> None:
    """Refuse, before any work, a reproducer directory that cannot be written: an existing
    non-directory, a directory without write permission, or a missing one whose parent is not
    a writable directory (a missing directory is created at the first disagreement)."""
    shown = printable(str(directory))
    if directory.exists():
        if not directory.is_dir():
            raise CliError(f"--save {shown}: not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CliError(f"--save {shown}: directory not writable")
        return
    parent = directory.absolute().parent
    where = printable(str(parent))
    if directory.is_symlink():
        raise CliError(f"--save {shown}: a symlink to nowhere")
    if not parent.exists():
        raise CliError(f"--save {shown}: no such directory, and its parent {where} is missing too")
    if not parent.is_dir():
        raise CliError(f"--save {shown}: {where} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--save {shown}: cannot be created, {where} is not writable")


def failure_text(failure: Failure, path: Path | None, save_error: str) -> list[str]:
    """One disagreeing case in full: how to repeat it, the operations, the disagreement with
    both walks, and where the reproducer is (or why it is not)."""
    case = failure.case
    lines = [
        f"DISAGREEING CASE: case seed {case.seed}, {case.kind} mapper, disagreement after step "
        f"{failure.step}; operations:",
        *(f"  {i}: {op.describe()}" for i, op in enumerate(case.ops[: failure.step + 1])),
        failure.report.disagreements[0].format(),
    ]
    if len(failure.report.disagreements) > 1:
        lines.append(f"... and {len(failure.report.disagreements) - 1} more disagreements")
    if path is not None:
        lines.append(f"reproducer: {path}  (kvmpage verify {path})")
    elif save_error:
        lines.append(f"reproducer NOT saved: {save_error}")
    return lines


def cmd_fuzz(args: argparse.Namespace) -> int:
    """``kvmpage fuzz``."""
    from kvmpage.cli import common
    from kvmpage.verify import Predictor
    from kvmpage.verify.fuzz import campaign

    save_dir = Path(args.save)
    check_save_dir(save_dir)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    quiet = args.json or args.quiet

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr)

    result = campaign(
        seed,
        cases=args.cases,
        seconds=args.seconds,
        length=args.length,
        save_dir=save_dir,
        log=log,
        predictor=common.PREDICTOR or Predictor,
    )
    code = EXIT_FAIL if result.failures else EXIT_OK
    error = None
    if not result.failures and result.probes == 0:
        code = EXIT_ERROR
        error = (
            f"the campaign made no probe ({result.cases} cases in {result.seconds:.2f} s): "
            "nothing was verified; give it more --seconds"
        )
    if args.json:
        emit_json(_json(result, seed, code, error))
    else:
        print(result.summary())
        for f, path, why in zip(result.failures, result.reproducers, result.save_errors,
                                strict=True):  # fmt: skip
            print("\n".join(failure_text(f, path, why)))
    if error is not None:
        print(f"kvmpage fuzz: error: {error}", file=sys.stderr)
    return code


def _json(result: CampaignResult, seed: int, code: int, error: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "command": "fuzz",
        "exit_code": code,
        "seed": seed,
        "cases": result.cases,
        "steps": result.steps,
        "probes": result.probes,
        "seconds": round(result.seconds, 3),
        "failures": [
            {
                "case_seed": f.case.seed,
                "mapper": f.case.kind,
                "step": f.step,
                "operations": [op.describe() for op in f.case.ops[: f.step + 1]],
                "first_disagreement": f.report.disagreements[0].format().splitlines()[0],
                "disagreement": f.report.disagreements[0].format(),
                "reproducer": str(path) if path is not None else None,
                "save_error": why or None,
            }
            for f, path, why in zip(
                result.failures, result.reproducers, result.save_errors, strict=True
            )
        ],
    }
    if error is not None:
        doc["error"] = error
    return doc
