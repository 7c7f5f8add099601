"""How long a layout with many mappings takes to load, build and dump (issue: 85 s for 60,000).

Run: ``python scripts/bench_layout.py [-n 60000] [--repeat 3]``. Writes a layout file of ``n``
one-page mappings (spread over several tables, half of them at given physical addresses, in
shuffled order so that the overlap check cannot rely on the file's order), then prints the
median time of: reading and checking the file (`load_layout`, where the overlap check runs),
building its tables in memory (`build`), and the whole ``kvmpage dump`` command (in-process,
output discarded). The target for 60,000 mappings is 2 s for the whole command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import tempfile
import time
from pathlib import Path


def layout_text(n: int, seed: int = 0) -> str:
    """A layout of ``n`` 4 KiB mappings, every 2nd page of a region, in random order."""
    memory = -(-((n * 8 * 4096 >> 20) + 64) // 2) * 2  # MiB, a multiple of 2
    lines = ['name = "many"', f'memory = "{memory}M"', ""]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for i in order:
        lines += [
            "[[mapping]]",
            f'name = "m{i}"',
            f"virt = {0x10_0000_0000 + 2 * i * 4096:#x}",
            *([f"phys = {0x100_0000 + i * 4096:#x}"] if i % 2 else []),
            'flags = ["W", "NX"]',
            "",
        ]
    return "\n".join(lines)


def median_time(fn: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60_000, help="mappings (default 60000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    args = parser.parse_args()

    from kvmpage.cli import main as kvmpage
    from kvmpage.cli.placement import alloc_end
    from kvmpage.layout.spec import build
    from kvmpage.layout.toml_file import load_layout

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.toml"
        path.write_text(layout_text(args.n))
        spec = load_layout(path)
        load = median_time(lambda: load_layout(path), args.repeat)
        build_time = median_time(
            lambda: build(spec, alloc_end=alloc_end(spec)).close(), args.repeat
        )

        def dump() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                code = kvmpage(["dump", str(path), "--quiet"])
            assert code in (0, 1), code

        whole = median_time(dump, args.repeat)
    print(f"{args.n} mappings: load+check {load:.2f} s, build {build_time:.2f} s, "
          f"kvmpage dump (whole command, in-process) {whole:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
