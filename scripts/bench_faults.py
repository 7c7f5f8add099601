#!/usr/bin/env python3
"""Benchmark the agent's slow paths: faulting probes, and probes at CPL0, in probes per second.

    .venv/bin/python scripts/bench_faults.py [--n 20000] [--repeat 5]
    git show main:kvmpage/machine/agent.bin > /tmp/old-agent.bin
    .venv/bin/python scripts/bench_faults.py --compare /tmp/old-agent.bin   # before / after

On a PVM host every instruction between a fault and the next probe runs in KVM's instruction
emulator (about 0.6 us each), so the fault path's length sets the speed of `kvmpage matrix`.
Each line is one kind of probe, repeated ``--n`` times in one batch on one address (so no shadow
page is built during the measurement), run ``--repeat`` times; it prints the median and the
spread of the guest time (the KVM_RUN loop only, `Machine.last_run_ns`) per probe.
``--compare OLD.bin`` runs every case with another agent image too, alternating the two batch
by batch so that a busy machine slows both alike, and prints both.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

from kvmpage.machine import agent, pte
from kvmpage.machine.machine import Machine
from kvmpage.machine.protocol import Batch, fetch_stub

VA = 0x0000_0080_0000_0000  # PML4 slot 1
RW_USER = pte.P | pte.W | pte.U | pte.A | pte.D


def _machine(n: int) -> tuple[Machine, dict[str, int]]:
    """A machine with: a user page (tag + fetch stub), a supervisor page, a read-only user page,
    an NX user page, and a hole, each at its own address."""
    m = Machine(32 << 20, capacity=2 * n + 16, timeout=120)
    bump = pte.FrameBump(m.memory, 0, m.reserved[0])
    space = pte.SimpleSpace(m.memory, bump)
    pages = {"user": RW_USER, "super": RW_USER & ~pte.U, "ro": RW_USER & ~pte.W,
             "nx": RW_USER | pte.NX}  # fmt: skip
    vas: dict[str, int] = {}
    for i, (name, flags) in enumerate(pages.items()):
        frame = bump.alloc()
        m.memory.write_u64(frame, 0x7A67 << 48 | frame)
        m.memory.write(frame + 0x40, fetch_stub(0x7A67 << 48 | frame))
        vas[name] = VA + i * 0x1000
        space.map(vas[name], frame, flags)
    vas["hole"] = VA + 0x10_0000
    m.install_agent_slot(space.p4)
    b = Batch()
    b.load_cr3(space.p4)
    m.run(b)
    return m, vas


CASES: list[tuple[str, str, Callable[[Batch, int], object]]] = [
    ("CPL3 read, ok", "user", lambda b, va: b.read(va, 3)),
    ("CPL3 read, #PF not present", "hole", lambda b, va: b.read(va, 3)),
    ("CPL3 read, #PF supervisor page", "super", lambda b, va: b.read(va, 3)),
    ("CPL3 write, #PF read-only", "ro", lambda b, va: b.write(va + 8, 0, 3)),
    ("CPL3 fetch, #PF NX", "nx", lambda b, va: b.fetch(va + 0x40, 3)),
    ("CPL0 read, ok", "user", lambda b, va: b.read(va, 0)),
    ("CPL0 write, ok", "user", lambda b, va: b.write(va + 8, 0x7A67 << 48, 0)),
    ("CPL0 fetch, ok", "super", lambda b, va: b.fetch(va + 0x40, 0)),
    ("CPL0 read, #PF not present", "hole", lambda b, va: b.read(va, 0)),
    ("CPL0 write, #PF read-only", "ro", lambda b, va: b.write(va + 8, 0, 0)),
    ("CPL0 fetch, #PF NX", "nx", lambda b, va: b.fetch(va + 0x40, 0)),
    ("CPL3+CPL0 read alternating, #PF", "hole", lambda b, va: (b.read(va, 3), b.read(va, 0))),
]


def _use_agent(image: agent.AgentImage) -> None:
    """Make new machines load ``image`` (the loader asks `agent.agent_image`)."""
    agent.agent_image = lambda: image  # type: ignore[assignment]
    agent._build_small_area.cache_clear()
    agent.small_area_pages.cache_clear()


def _per_probe(m: Machine, batch: Batch) -> float:
    m.run(batch)
    return m.last_run_ns / len(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="probes per batch (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="batches per case (default 5)")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--compare", metavar="OLD.bin", help="another agent image to compare with")
    args = ap.parse_args()
    new_image = agent.agent_image()
    images = {"now": new_image}
    if args.compare:
        images = {"before": agent.AgentImage.parse(Path(args.compare).read_bytes()), **images}
    machines = {}
    for label, image in images.items():
        _use_agent(image)
        machines[label] = _machine(args.n)
    _use_agent(new_image)
    try:
        print(f"median of {args.repeat} batches of {args.n} probes on one address (guest time)")
        for name, page, add in CASES:
            if args.only not in name:
                continue
            times: dict[str, list[float]] = {label: [] for label in machines}
            wrong = 0
            for _ in range(args.repeat):
                for label, (m, vas) in machines.items():
                    b = Batch()
                    for _ in range(args.n):
                        add(b, vas[page])
                    times[label].append(_per_probe(m, b))
                    res = m.run(b)
                    wrong += sum(1 for r in res if (r.fault is not None) != ("#PF" in name))
            cells = "  ".join(
                f"{label} {statistics.median(t) / 1e3:6.2f} us {1e9 / statistics.median(t):8.0f}/s"
                f" [{min(t) / 1e3:.1f}-{max(t) / 1e3:.1f}]"
                for label, t in times.items()
            )
            print(f"  {name:<34} {cells}" + (f"  UNEXPECTED OUTCOMES: {wrong}" if wrong else ""))
    finally:
        for m, _ in machines.values():
            m.close()


if __name__ == "__main__":
    main()
