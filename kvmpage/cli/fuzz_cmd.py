"""``kvmpage fuzz``: the differential campaign (`kvmpage.verify.fuzz`) from the command line.

Random layouts and operation sequences over every mapper, each step verified on KVM; the seed
is printed first so any run can be repeated, and a disagreeing case is shrunk and saved as a
layout file.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from kvmpage.cli.common import EXIT_FAIL, EXIT_OK
from kvmpage.cli.output import emit_json


def cmd_fuzz(args: argparse.Namespace) -> int:
    """``kvmpage fuzz``."""
    from kvmpage.cli import common
    from kvmpage.verify import Predictor
    from kvmpage.verify.fuzz import campaign

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
        save_dir=Path(args.save),
        log=log,
        predictor=common.PREDICTOR or Predictor,
    )
    code = EXIT_FAIL if result.failures else EXIT_OK
    if args.json:
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
                    "reproducer": str(path) if path is not None else None,
                }
                for f, path in zip(
                    result.failures,
                    [*result.reproducers, *[None] * len(result.failures)],
                    strict=False,
                )
            ],
        }
        emit_json(doc)
        return code
    print(result.summary())
    for path in result.reproducers:
        print(f"reproducer: {path}  (kvmpage verify {path})")
    return code
