"""Probes per second of the ``tcg`` oracle next to ``kvm`` (medians).

    .venv/bin/python scripts/bench_tcg.py [--repeat 5] [--pages 4096]

Machine level: one batch of CPL3 reads of ``--pages`` mapped pages (first touch, then again),
CPL0 reads, CPL3 reads that fault, and probes alternating CPL3 and CPL0 (each switch is a
ring change). Verifier level: ``verify`` of the built-in layout (every page, read / write /
fetch at both CPLs, the holes), probes per second of its whole run. Each number is the median
of ``--repeat`` runs on fresh machines. Without /dev/kvm only ``tcg`` is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import build
from kvmpage.machine import Batch, Machine, ProbeMachine, pte
from kvmpage.tcg import TcgMachine
from kvmpage.verify import Verifier

TAG = 0x6B70 << 48
BASE = 0x40_0000


def space(m: ProbeMachine, pages: int) -> tuple[int, list[int]]:
    """``pages`` user pages at BASE, tagged; returns the root and their addresses."""
    mem = m.memory
    frames = pte.FrameBump(mem, 0x10_0000, m.reserved[0])
    s = pte.SimpleSpace(mem, frames)
    vas = []
    for i in range(pages):
        f = frames.alloc()
        mem.write_u64(f, TAG | f)
        s.map(BASE + i * 4096, f, pte.P | pte.W | pte.U)
        vas.append(BASE + i * 4096)
    m.install_agent_slot(s.p4)
    return s.p4, vas


def timed(m: ProbeMachine, batch: Batch, probes: int) -> float:
    t = time.perf_counter()
    m.run(batch)
    return probes / (time.perf_counter() - t)


def machine_level(make: Callable[[], ProbeMachine], pages: int) -> dict[str, float]:
    with make() as m:  # type: ignore[attr-defined]
        p4, vas = space(m, pages)
        b = Batch()
        b.load_cr3(p4)
        m.run(b)
        out = {}
        b = Batch()
        b.reads(vas)
        out["CPL3 reads, first touch"] = timed(m, b, pages)
        out["CPL3 reads, again"] = timed(m, b, pages)
        b = Batch()
        for va in vas:
            b.read(va, 0)
        out["CPL0 reads"] = timed(m, b, pages)
        b = Batch()
        b.reads([va + (1 << 32) for va in vas[:2048]])
        out["CPL3 reads that fault"] = timed(m, b, min(pages, 2048))
        b = Batch()
        for va in vas[:2048]:
            b.read(va)
            b.read(va, 0)
        out["alternating CPL3 / CPL0"] = timed(m, b, 2 * min(pages, 2048))
        return out


def verifier_level(make: Callable[[int], ProbeMachine], gbpages: bool) -> dict[str, float]:
    spec = builtin_layout(gbpages=gbpages)
    with make(spec.memory_size) as m:  # type: ignore[attr-defined]
        spec = dataclasses.replace(spec, reserved_p4=spec.reserved_p4 | {m.agent_slot})
        built = build(spec, m.memory, alloc_end=m.reserved[0])
        v = Verifier(built.mapper, m, cpu=spec.cpu)
        t = time.perf_counter()
        report = v.verify()
        seconds = time.perf_counter() - t
        assert report.ok, report.format()
        return {"verify builtin (probes/s of the whole run)": report.probes / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pages", type=int, default=4096)
    args = parser.parse_args()
    oracles: dict[str, tuple[Callable[[], ProbeMachine], Callable[[int], ProbeMachine]]] = {
        "tcg": (lambda: TcgMachine(64 << 20), lambda size: TcgMachine(size)),
    }
    try:
        with Machine(8 << 20):
            pass
        oracles["kvm"] = (lambda: Machine(64 << 20), lambda size: Machine(size))
    except OSError as e:
        print(f"kvm: not measured ({e})")
    results: dict[str, dict[str, list[float]]] = {}
    for name, (small, sized) in oracles.items():
        for _ in range(args.repeat):
            for what, rate in machine_level(small, args.pages).items():
                results.setdefault(what, {}).setdefault(name, []).append(rate)
            for what, rate in verifier_level(sized, gbpages=False).items():
                results.setdefault(what, {}).setdefault(name, []).append(rate)
    names = list(oracles)
    print(f"probes per second, median of {args.repeat} ({args.pages} pages)")
    print(f"{'':<44}" + "".join(f"{n:>14}" for n in names) + "   tcg/kvm")
    for what, per in results.items():
        medians = {n: statistics.median(per[n]) for n in names if n in per}
        ratio = medians["tcg"] / medians["kvm"] if "kvm" in medians else float("nan")
        row = "".join(f"{medians[n]:>14,.0f}" for n in names)
        print(f"{what:<44}{row}   {ratio:7.2f}")


if __name__ == "__main__":
    main()
