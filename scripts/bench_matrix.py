#!/usr/bin/env python3
"""Benchmark ``kvmpage matrix`` end to end: combinations per second, and where the time goes.

    .venv/bin/python scripts/bench_matrix.py [--repeat 3] [--jobs 1] [--full-part 20]

Runs the CI sample (20,000 combinations) and one part of the full matrix (``--shard 1/N``)
``--repeat`` times each, through `run_matrix` (what the command does, without printing), and
prints medians: combinations per second over the whole call (host profile, selection, VM,
tables, probes, checks), the guest's time (KVM_RUN) and the host's CPU time (building and
checking, which overlaps the guest's). The machine's load average is printed too: on a shared
host the numbers move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics

from kvmpage.matrix import Selection, run_matrix


def bench(label: str, selection: Selection, repeat: int, jobs: int) -> None:
    rates, guest, host, secs = [], [], [], []
    checked = 0
    for _ in range(repeat):
        r = run_matrix(selection, jobs=jobs)
        if r.totals.disagreement_count:
            print(f"  {label}: {r.totals.disagreement_count} DISAGREEMENTS")
        checked = r.totals.checked
        secs.append(r.seconds)
        rates.append(checked / r.seconds)
        guest.append(r.totals.guest_seconds / checked * 1e6)
        host.append(r.totals.host_seconds / checked * 1e6)
    print(
        f"{label:<28} {checked:>9,} combinations  {statistics.median(secs):7.2f} s  "
        f"{statistics.median(rates):9,.0f}/s (min {min(rates):,.0f}, max {max(rates):,.0f})  "
        f"guest {statistics.median(guest):5.1f} us/comb, host CPU {statistics.median(host):5.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--full-part", type=int, default=20, metavar="N",
                    help="run shard 1/N of the full matrix (default 20)")  # fmt: skip
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"medians of {args.repeat}, --jobs {args.jobs}")  # fmt: skip
    bench("sample 20000 (CI)", Selection("sample", 20000, 1), args.repeat, args.jobs)
    part = Selection("full", seed=0, shard=(1, args.full_part))
    bench(f"full, shard 1/{args.full_part}", part, args.repeat, args.jobs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
