"""`run_matrix`: a selection of combinations checked on this host, in one process or ``jobs``.

Each job is a process with its own machine (one VM, one vCPU) and takes every ``jobs``-th
combination of the selection; the parent adds their totals up and shows their progress. Jobs
are started with ``spawn`` (a fresh interpreter: nothing of the parent's KVM file descriptors or
threads is inherited).
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from kvmpage.matrix.engine import Runner, capacity
from kvmpage.matrix.expect import Model
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.matrix.report import DEFAULT_LIMIT, Totals
from kvmpage.matrix.select import Selection

#: Called now and then with (combinations checked so far, of how many, disagreements so far).
ProgressFn = Callable[[int, int, int], None]


@dataclass
class MatrixResult:
    """A finished run: what was selected, the host, what was found, how long it took."""

    selection: Selection
    host: HostFacts
    totals: Totals
    seconds: float
    jobs: int = 1
    #: combinations left out before any host saw them (reason -> count; shard 1 reports them)
    filtered: Counter[str] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        return 1 if self.totals.disagreement_count else 0


def machine_for(host: HostFacts, device: str) -> Any:
    """A machine sized for a matrix run (big enough batches, a table pool, 1 GiB frames where
    the host has 1 GiB pages)."""
    from kvmpage.machine import Machine
    from kvmpage.matrix.arena import memory_size

    return Machine(memory_size(host.gbpages_work), capacity=capacity(512), device=device,
                   timeout=60.0)  # fmt: skip


def run_matrix(
    selection: Selection,
    *,
    device: str = "/dev/kvm",
    jobs: int = 1,
    model: Model | None = None,
    limit: int = DEFAULT_LIMIT,
    progress: ProgressFn | None = None,
) -> MatrixResult:
    """Check ``selection`` on the KVM behind ``device`` against ``model`` (default: the
    permission model, `kvmpage.paging.access.evaluate`)."""
    from kvmpage.machine import host_profile

    if jobs < 1:
        raise ValueError("--jobs must be at least 1")
    t0 = time.perf_counter()
    host = HostFacts.from_profile(host_profile(device))
    total = selection.count()
    if jobs == 1:
        totals, filtered = _run_part(selection, (0, 1), host, device, model, limit,
                                     None if progress is None else
                                     lambda t: progress(t.checked + sum(t.skipped.values()),
                                                        total, t.disagreement_count))  # fmt: skip
    else:
        try:
            totals, filtered = _run_jobs(selection, jobs, host, device, model, limit, total,
                                         progress)  # fmt: skip
        except pickle.PicklingError as e:
            raise RuntimeError(f"--jobs {jobs}: the model cannot go to a job: {e}") from None
    if selection.shard[0] != 1:
        filtered = Counter()
    return MatrixResult(selection, host, totals, time.perf_counter() - t0, jobs, filtered)


def _run_part(
    selection: Selection,
    part: tuple[int, int],
    host: HostFacts,
    device: str,
    model: Model | None,
    limit: int,
    progress: Callable[[Totals], None] | None,
) -> tuple[Totals, Counter[str]]:
    with machine_for(host, device) as machine:
        runner = Runner(machine, host, model=model, limit=limit, progress=progress)
        totals = runner.run(selection.rows(part))
    filtered = selection.filtered if part[0] == 0 else Counter()
    return totals, Counter(filtered)


# -- jobs -----------------------------------------------------------------------------------

_SHARED: Any = None


def _init_job(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _job(
    selection: Selection, part: tuple[int, int], host: HostFacts, device: str,
    model: Model | None, limit: int,
) -> tuple[Totals, Counter[str]]:  # fmt: skip
    """One job (in its own process): its part of the selection on its own machine."""
    shared = _SHARED
    j = part[0]

    def report(t: Totals) -> None:
        if shared is not None:
            shared[2 * j] = t.checked + sum(t.skipped.values())
            shared[2 * j + 1] = t.disagreement_count

    try:
        return _run_part(selection, part, host, device, model, limit, report)
    except Exception as e:
        # what reaches the parent must unpickle (some exceptions take more than a message)
        # and read as one line there
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(f"job {j + 1} of {part[1]}: {first}") from None


def _run_jobs(
    selection: Selection, jobs: int, host: HostFacts, device: str, model: Model | None,
    limit: int, total: int, progress: ProgressFn | None,
) -> tuple[Totals, Counter[str]]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.Array("q", 2 * jobs, lock=False)
    totals = Totals()
    filtered: Counter[str] = Counter()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_job,
                             initargs=(shared,)) as pool:  # fmt: skip
        futures = [
            pool.submit(_job, selection, (j, jobs), host, device, model, limit) for j in range(jobs)
        ]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            if progress is not None:
                progress(sum(shared[0::2]), total, sum(shared[1::2]))
            for f in done:
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
        for f in futures:
            part_totals, part_filtered = f.result()
            totals.merge(part_totals, limit)
            filtered.update(part_filtered)
    return totals, filtered
