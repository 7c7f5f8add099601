"""The software walk against Volatility 3's ``Intel32e`` layer, side by side in one run.

    .venv/bin/python scripts/bench_walk.py [--memory flat|image|segments|all] [-n N] [--repeats R]

Issue 13 ("Speed of the walk") asks for the one walk to be 10x Volatility 3 on both:

- translate: one random mapped address to its physical address. kvmpage's `resolve` (the
  address only, as Volatility's ``translate`` returns it) against ``Intel32e.translate``; the
  full `walk` record (every entry read, its address, the reason) is printed beside it.
  Target: at most 0.8 µs per address.
- enumerate: every mapping of 1 GiB of 4 KiB pages (262,144 leaves). kvmpage's `scan` (a
  `Leaf` per page: virtual and physical address, size, raw entry, rights, the entries above)
  against ``Intel32e.mapping(start, 1 GiB)`` consumed to the end; `scan_groups` (the bulk
  form, a table of leaves at a time) is printed beside it. Target: at most 0.2 s per GiB.

Both sides read the same tables: a PML4, PDPT and PD and 512 page tables mapping virtual
``[1 GiB, 2 GiB)`` onto scattered frames of a 64 MiB physical memory (no two neighbours
contiguous, so nothing coalesces). ``flat``: kvmpage's `PhysMemory` against a Volatility
``BufferDataLayer`` over the same bytes. ``image``: the memory written to a raw image file,
opened by `kvmpage.image.open_image` (a `SegmentedMemory` over the file's ``mmap``) and by a
Volatility ``FileLayer``. ``segments``: the same bytes as two segments (as an ELF core with
more than one RAM range is), which kvmpage walks through its general path, one
`PhysicalMemory.frame_words` per level, against the ``BufferDataLayer``.

Each number is the median of ``--repeats`` runs after one warm-up run (Volatility caches the
tables it read: the warm-up gives it a full cache), the runs of all cases taken in turn. The
answers are checked to agree before anything is timed. Takes about 25 s per memory.

Volatility 3 is a benchmark-only dependency (never a runtime or test one): install it with
``.venv/bin/pip install volatility3`` (or ``pip install -e '.[bench]'``), or run this script
with ``--install`` to have it do that for the interpreter running it; ``--no-volatility``
measures kvmpage alone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmpage.image import open_image
from kvmpage.memory import PhysicalMemory, PhysMemory
from kvmpage.paging.leaves import scan, scan_groups
from kvmpage.paging.walk import resolve, walk
from kvmpage.segmented import Segment, SegmentedMemory

MEMORY = 64 << 20
ROOT, PDPT, PD, PT0 = 0x1000, 0x2000, 0x3000, 0x4000
FIRST_FRAME = 4 << 20  # after the tables
BASE = 1 << 30  # virtual: PML4 entry 0, PDPT entry 1
GIB = 1 << 30
TRANSLATE_TARGET_US = 0.8
ENUMERATE_TARGET_S = 0.2


def build() -> PhysMemory:
    """The tables of the module docstring, written word by word (no mapper involved)."""
    memory = PhysMemory(MEMORY)
    q = memory.words
    q[ROOT >> 3] = PDPT | 0x7
    q[(PDPT >> 3) + 1] = PD | 0x7
    frames = (MEMORY - FIRST_FRAME) >> 12
    for t in range(512):
        q[(PD >> 3) + t] = (PT0 + (t << 12)) | 0x7
        pt = (PT0 + (t << 12)) >> 3
        for i in range(512):
            frame = ((t * 512 + i) * 7919) % frames  # 7919 is prime: a scattered permutation
            q[pt + i] = (FIRST_FRAME + (frame << 12)) | 0x63  # present, writable, A, D
    return memory


def median_times(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each case over ``repeats`` rounds, after one warm-up run each (s).

    The rounds interleave the cases (each runs once per round), so a change in the machine's
    load during the run (other processes on shared cores) weighs on every case alike.
    """
    for fn in cases.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(times) for name, times in samples.items()}


def load_volatility(install: bool) -> Any:
    """The ``volatility3`` module, installing it first with ``--install``; None if missing."""
    try:
        return importlib.import_module("volatility3")
    except ImportError:
        if not install:
            return None
    print("installing volatility3 (benchmark only) with pip ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "volatility3"], check=True)
    importlib.invalidate_caches()
    return importlib.import_module("volatility3")


def volatility_layer(raw: bytes | None, path: Path | None) -> Any:
    """An ``Intel32e`` layer with CR3 = ``ROOT`` over a ``BufferDataLayer`` holding ``raw``, or
    over a ``FileLayer`` reading the raw image at ``path``."""
    from volatility3.framework import contexts
    from volatility3.framework.layers.intel import Intel32e
    from volatility3.framework.layers.physical import BufferDataLayer, FileLayer

    ctx = contexts.Context()
    if raw is not None:
        ctx.add_layer(BufferDataLayer(ctx, "base", "base", buffer=raw))
    else:
        assert path is not None
        ctx.config["base.location"] = path.resolve().as_uri()
        ctx.add_layer(FileLayer(ctx, "base", "base"))
    ctx.config["intel.memory_layer"] = "base"
    ctx.config["intel.page_map_offset"] = ROOT
    layer = Intel32e(ctx, "intel", "intel")
    ctx.add_layer(layer)
    return layer


def measure(
    label: str, memory: PhysicalMemory, vol: Any, vas: list[int], repeats: int
) -> dict[str, float]:
    """Time every case over ``memory`` (and ``vol``, the Volatility layer, unless None)."""
    # the answers first: same physical address for every sampled address, same leaves
    expected = [resolve(memory, ROOT, va) for va in vas[:2000]]
    assert [walk(memory, ROOT, va).phys for va in vas[:2000]] == expected
    leaves = list(scan(memory, ROOT, start=BASE, end=BASE + GIB))
    assert len(leaves) == GIB >> 12 and all(leaf.size == 4096 for leaf in leaves)
    if vol is not None:
        assert [vol.translate(va)[0] for va in vas[:2000]] == expected
        runs = list(vol.mapping(BASE, GIB))
        assert sum(r[1] for r in runs) == GIB
        assert {r[0]: r[2] for r in runs} == {leaf.virt: leaf.phys for leaf in leaves}
    del leaves

    def resolve_all() -> None:
        for va in vas:
            resolve(memory, ROOT, va)

    def walk_all() -> None:
        for va in vas:
            walk(memory, ROOT, va)

    def scan_all() -> None:
        for _ in scan(memory, ROOT, start=BASE, end=BASE + GIB):
            pass

    def groups_all() -> None:
        for _ in scan_groups(memory, ROOT, start=BASE, end=BASE + GIB):
            pass

    cases: dict[str, Callable[[], object]] = {
        "resolve": resolve_all, "walk": walk_all, "scan": scan_all, "scan_groups": groups_all,
    }  # fmt: skip
    if vol is not None:

        def vol_translate() -> None:
            for va in vas:
                vol.translate(va)

        def vol_mapping() -> None:
            for _ in vol.mapping(BASE, GIB):
                pass

        cases |= {"vol translate": vol_translate, "vol mapping": vol_mapping}
    out = median_times(cases, repeats)
    for name in ("resolve", "walk", "vol translate"):
        if name in out:
            out[name] *= 1e6 / len(vas)  # µs per address
    report(label, out)
    return out


def report(label: str, r: dict[str, float]) -> None:
    """Print one memory's numbers, the ratios to Volatility, and the targets."""
    vt, vm = r.get("vol translate"), r.get("vol mapping")

    def ratio(vol: float | None, ours: float) -> str:
        return f"  {vol / ours:5.1f}x Volatility" if vol else ""

    def ok(value: float, target: float) -> str:
        return "ok" if value <= target else "MISSED"

    print(f"\n== {label} ==")
    print("translate, per address (random mapped addresses in 1 GiB of 4 KiB pages):")
    if vt:
        print(f"  volatility3 Intel32e.translate     {vt:8.3f} µs")
    print(
        f"  kvmpage resolve                    {r['resolve']:8.3f} µs{ratio(vt, r['resolve'])}"
        f"  [target <= {TRANSLATE_TARGET_US} µs: {ok(r['resolve'], TRANSLATE_TARGET_US)}]"
    )
    print(f"  kvmpage walk (full Walk record)    {r['walk']:8.3f} µs{ratio(vt, r['walk'])}")
    print("enumerate 1 GiB of 4 KiB leaves (262,144), whole call:")
    if vm:
        print(f"  volatility3 Intel32e.mapping       {vm:8.3f} s")
    print(
        f"  kvmpage scan (a Leaf per page)     {r['scan']:8.3f} s {ratio(vm, r['scan'])}"
        f"  [target <= {ENUMERATE_TARGET_S} s: {ok(r['scan'], ENUMERATE_TARGET_S)}]"
    )
    g = r["scan_groups"]
    print(f"  kvmpage scan_groups (bulk)         {g:8.3f} s {ratio(vm, g)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--memory", choices=("flat", "image", "segments", "all"), default="all")
    p.add_argument("-n", type=int, default=100_000, help="addresses translated per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per number (median)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--install", action="store_true", help="pip install volatility3 if missing")
    p.add_argument("--no-volatility", action="store_true", help="measure kvmpage alone")
    args = p.parse_args()

    vol_module = None if args.no_volatility else load_volatility(args.install)
    if vol_module is None and not args.no_volatility:
        print(
            "volatility3 is not installed: it is a benchmark-only dependency. Install it with\n"
            f"  {sys.executable} -m pip install volatility3\n"
            "(or pip install -e '.[bench]'), or rerun with --install; --no-volatility measures "
            "kvmpage alone.",
            file=sys.stderr,
        )
        return 2
    version = getattr(vol_module, "__version__", None)
    if vol_module is not None and version is None:
        from volatility3.framework import constants

        version = constants.PACKAGE_VERSION
    print(f"python {sys.version.split()[0]}, volatility3 {version or '-'}, {os.cpu_count()} CPUs")
    print(f"median of {args.repeats} runs after a warm-up; translate over {args.n} addresses")

    memory = build()
    rng = random.Random(args.seed)
    vas = [BASE + rng.randrange(GIB) for _ in range(args.n)]
    kinds = ("flat", "image", "segments") if args.memory == "all" else (args.memory,)
    if "flat" in kinds:
        raw = memory.read(0, MEMORY) if vol_module is not None else None
        vol = volatility_layer(raw, None) if raw is not None else None
        measure("flat memory (PhysMemory / BufferDataLayer)", memory, vol, vas, args.repeats)
        del vol, raw
    if "segments" in kinds:
        data = bytearray(memory.read(0, MEMORY))
        cut = MEMORY // 2
        segmented = SegmentedMemory([Segment(0, data[:cut]), Segment(cut, data[cut:])])
        vol = volatility_layer(bytes(data), None) if vol_module is not None else None
        label = "two segments (SegmentedMemory: the general path / BufferDataLayer)"
        measure(label, segmented, vol, vas, args.repeats)
        segmented.close()
        del vol
    if "image" in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "memory.raw"
            path.write_bytes(memory.read(0, MEMORY))
            vol = volatility_layer(None, path) if vol_module is not None else None
            with open_image(path) as image:
                label = f"raw image file ({type(image.memory).__name__} / FileLayer)"
                measure(label, image.memory, vol, vas, args.repeats)
            del vol
    memory.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
