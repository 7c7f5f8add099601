#!/usr/bin/env python3
"""Wall time of whole ``kvmpage`` commands, process start to exit (the README's "about 0.3 s").

    .venv/bin/python scripts/bench_cli.py [--runs N] [-- COMMAND ...]

Runs the console script next to this interpreter (``python -m kvmpage.cli`` when there is
none) ``--runs`` times after two warm-up runs and prints the median, the fastest and the
slowest run. Default command: ``verify --quiet``. The test suite checks what the commands
print, never how fast they are; this script (or ``hyperfine``) measures that.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def console_script() -> list[str]:
    """The installed ``kvmpage`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("kvmpage")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvmpage.cli"]


def timed_runs(argv: list[str], runs: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``runs`` runs of ``argv`` (each must exit 0)."""
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit status {proc.returncode}: {proc.stderr}")
        if i >= warmup:
            times.append(elapsed)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    ap.add_argument("command", nargs="*", default=["verify", "--quiet"], help="kvmpage arguments")
    args = ap.parse_args()
    argv = [*console_script(), *args.command]
    times = timed_runs(argv, args.runs)
    print(
        f"kvmpage {' '.join(args.command)}: median {statistics.median(times) * 1e3:.0f} ms, "
        f"fastest {min(times) * 1e3:.0f} ms, slowest {max(times) * 1e3:.0f} ms "
        f"over {len(times)} runs"
    )


if __name__ == "__main__":
    main()
