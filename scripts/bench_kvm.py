#!/usr/bin/env python3
"""Benchmark the KVM backend: VM bring-up, exit round trip, watchdog latency, batched CPL3
probe throughput.

    .venv/bin/python scripts/bench_kvm.py [--quick]

Prints medians. "guest" times are the KVM_RUN loop only (`Machine.last_run_ns`); "total" adds
encoding the batch and copying the results back in Python.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kvmpage.kvm.handles import Kvm
from kvmpage.machine import WatchdogTimeout, pte
from kvmpage.machine.machine import Machine
from kvmpage.machine.protocol import ST_OK, Batch

TAG = 0x7A67_0000_0000_0000
PROBE_VA = 0x0000_0080_0000_0000  # PML4 slot 1


def bench_ready(n: int) -> None:
    Machine().close()  # warm the caches (supported CPUID, agent image, boot state)
    ready, teardown, first_run = [], [], []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        m = Machine()
        t1 = time.perf_counter_ns()
        m.run(Batch())
        t2 = time.perf_counter_ns()
        m.close()
        t3 = time.perf_counter_ns()
        ready.append(t1 - t0)
        first_run.append(t2 - t1)
        teardown.append(t3 - t2)
    print(
        f"VM ready to run (open /dev/kvm .. regs set), median of {n}: "
        f"{statistics.median(ready) / 1e3:.0f} us"
    )
    print(
        f"  first batch (empty): {statistics.median(first_run) / 1e3:.0f} us, "
        f"teardown: {statistics.median(teardown) / 1e3:.0f} us"
    )


def bench_exit(n: int) -> None:
    with Machine() as m:
        m.run(Batch())
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            m.run(Batch())
            times.append(time.perf_counter_ns() - t0)
        print(
            f"exit round trip (empty batch, Machine.run), median of {n}: "
            f"{statistics.median(times) / 1e3:.1f} us (KVM_RUN loop only: "
            f"{m.last_run_ns / 1e3:.1f} us last)"
        )


def bench_watchdog(n: int, timeout: float = 0.1) -> None:
    """How long after its deadline the watchdog stops a guest spinning in ``jmp .`` (CPL3)."""
    with Machine(16 << 20) as m:
        bump = pte.FrameBump(m.memory, 0, m.reserved[0])
        space = pte.SimpleSpace(m.memory, bump)
        frame = bump.alloc()
        m.memory.write(frame, b"\xeb\xfe")  # jmp .
        space.map(PROBE_VA, frame, pte.P | pte.U)
        m.install_agent_slot(space.p4)
        late = []
        for _ in range(n):
            b = Batch()
            b.load_cr3(space.p4)
            b.fetch(PROBE_VA)
            t0 = time.perf_counter()
            try:
                m.run(b, timeout=timeout)
            except WatchdogTimeout:
                late.append(time.perf_counter() - t0 - timeout)
            else:
                raise SystemExit("the spinning guest finished its batch")
    print(
        f"watchdog: a stuck guest stopped after its {timeout * 1e3:.0f} ms timeout + median "
        f"{statistics.median(late) * 1e3:.1f} ms (slowest +{max(late) * 1e3:.1f} ms), {n} runs"
    )


def bench_costs(n: int) -> None:
    """Per-probe cost of the slow paths: CPL0 probes (emulated on PVM) and faults."""
    with Machine(32 << 20, capacity=n + 1) as m:
        bump = pte.FrameBump(m.memory, 0, m.reserved[0])
        space = pte.SimpleSpace(m.memory, bump)
        space.map(PROBE_VA, bump.alloc(), pte.P | pte.W | pte.U | pte.A | pte.D)
        m.install_agent_slot(space.p4)
        b = Batch()
        b.load_cr3(space.p4)
        m.run(b)
        absent = PROBE_VA + 0x1000
        for label, addr, cpl in (
            ("CPL0 read", PROBE_VA, 0),
            ("CPL3 read faulting (#PF)", absent, 3),
            ("CPL0 read faulting (#PF)", absent, 0),
        ):
            batch = Batch()
            batch.reads([addr] * n, cpl=cpl)
            times = []
            for _ in range(3):
                m.run(batch)
                times.append(m.last_run_ns / n)
            print(f"{label:<26} {statistics.median(times) / 1e3:6.1f} us/probe (N={n})")


def bench_probes(n: int, leaf_flags: int, label: str, repeat: int) -> None:
    results = [_probe_passes(n, leaf_flags, seed) for seed in range(repeat)]
    passes = [
        (
            statistics.median(r[0][i][0] for r in results),
            statistics.median(r[0][i][1] for r in results),
        )
        for i in range(3)
    ]
    bad = sum(r[1] for r in results)
    p = "  ".join(f"pass{i + 1} {g:8.1f} ({t:8.1f})" for i, (g, t) in enumerate(passes))
    print(f"{label} N={n:>6}: ns/probe guest (total)  {p}   mismatches={bad}")


def _probe_passes(n: int, leaf_flags: int, seed: int) -> tuple[list[tuple[float, float]], int]:
    """Three consecutive runs of N CPL3 reads on a fresh VM: (guest, total) ns/probe, mismatches."""
    frames_bytes = n * 4096
    tables = (n // 512 + 8) * 4096
    cmd = (n + 2) * 64
    mem = frames_bytes + tables + cmd + (8 << 20)
    mem = -(-mem // (2 << 20)) * (2 << 20)
    with Machine(mem, capacity=n + 1, timeout=60) as m:
        memory = m.memory
        bump = pte.FrameBump(memory, 0, m.reserved[0])
        space = pte.SimpleSpace(memory, bump)
        frames = [bump.alloc() for _ in range(n)]
        random.Random(seed * 1_000_003 + n).shuffle(frames)
        q = memory._q
        for f in frames:
            q[f >> 3] = TAG | f
        for i, f in enumerate(frames):
            space.map(PROBE_VA + i * 4096, f, leaf_flags)
        m.install_agent_slot(space.p4)
        b = Batch()
        b.load_cr3(space.p4)
        m.run(b)
        addrs = [PROBE_VA + i * 4096 for i in range(n)]
        batch = Batch()
        batch.reads(addrs)
        passes = []
        for _ in range(3):
            t0 = time.perf_counter_ns()
            res = m.run(batch)
            total = time.perf_counter_ns() - t0
            passes.append((m.last_run_ns / n, total / n))
        values = res.values()
        bad = sum(1 for v, f in zip(values, frames, strict=True) if v != TAG | f)
        bad += sum(1 for s in res.statuses() if s != ST_OK)
        return passes, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    args = ap.parse_args()
    Kvm().close()
    bench_ready(50 if args.quick else 300)
    bench_exit(200 if args.quick else 2000)
    bench_watchdog(5 if args.quick else 20)
    bench_costs(200 if args.quick else 1000)
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 100_000, 262_144]
    repeat = 1 if args.quick else 3
    print(f"CPL3 reads of distinct 4 KiB pages, median of {repeat} VM(s); pass 1 = first touch")
    for n in sizes:
        bench_probes(n, pte.P | pte.W | pte.U, "4K leaves P|W|U      ", repeat)
    for n in sizes:
        bench_probes(n, pte.P | pte.W | pte.U | pte.A | pte.D, "4K leaves P|W|U|A|D  ", repeat)


if __name__ == "__main__":
    main()
