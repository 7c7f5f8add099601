"""Time the memory-image commands on a real image (the targets of the image work).

    python scripts/bench_image.py IMAGE [--runs 5] [--verify] [--all]

IMAGE is a full dump, e.g. from ``python scripts/make_linux_dump.py --out DIR --scenario pti``
(a 256 MiB Linux guest, about 67,000-75,000 leaves with espfix). Prints, each as the median and
the minimum of ``--runs`` runs, whole process (``python -m kvmpage.cli ...``): ``image info``,
``dump --image`` (text and ``--json``), and with ``--verify`` ``verify --image`` (default
sample; ``--all`` adds the every-leaf run), then the time to open the image in-process, and
checks that the file's SHA-256 did not change.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import time


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def timed(argv: list[str], runs: int) -> tuple[float, float, int]:
    """Median and minimum wall time of ``kvmpage argv`` (output discarded), and its exit code."""
    times = []
    code = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "kvmpage.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        times.append(time.perf_counter() - t0)
        code = proc.returncode
        if code not in (0, 1):
            print(proc.stderr.decode(), file=sys.stderr)
    return statistics.median(times), min(times), code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("image")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--verify", action="store_true", help="also time verify --image (needs KVM)")
    p.add_argument("--all", action="store_true", help="also time verify --image --all-leaves")
    args = p.parse_args()
    before = sha256(args.image)

    from kvmpage.image import open_image

    opens = []
    for _ in range(max(args.runs, 5)):
        t0 = time.perf_counter()
        with open_image(args.image) as image:
            image.context()
        opens.append(time.perf_counter() - t0)
    print(f"open (in process)        median {statistics.median(opens) * 1e3:7.2f} ms")

    cases = [
        ("image info", ["image", "info", args.image]),
        ("dump --image (text)", ["dump", "--image", args.image]),
        ("dump --image --json", ["dump", "--image", args.image, "--json"]),
        ("dump --format ptdump", ["dump", "--image", args.image, "--format", "ptdump"]),
    ]
    if args.verify:
        cases.append(("verify --image", ["verify", "--image", args.image, "--quiet"]))
    if args.all:
        every_leaf = ["verify", "--image", args.image, "--all-leaves", "--quiet"]
        cases.append(("verify --image --all-leaves", every_leaf))
    for name, argv in cases:
        runs = 1 if "--all-leaves" in argv else args.runs
        median, best, code = timed(argv, runs)
        print(f"{name:<28} median {median:7.3f} s  min {best:7.3f} s  (exit {code}, {runs} runs)")
    after = sha256(args.image)
    print(f"image unchanged: {before == after} (sha256 {after[:16]}...)")
    return 0 if before == after else 1


if __name__ == "__main__":
    raise SystemExit(main())
