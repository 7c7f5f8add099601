"""What every ``kvmpage`` command shares: layouts, the machine, JSON output, progress, errors.

Exit codes are the contract CI relies on: `EXIT_OK` when the check passed, `EXIT_FAIL` when it
ran and found something (a disagreement, a W+X finding with ``--strict``, a difference), and
`EXIT_ERROR` when it could not run (a bad layout file, no /dev/kvm...), with the reason.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from kvmpage.layout.audit import Finding
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.dump import Run, flag_names, human_size
from kvmpage.layout.spec import BuiltLayout, LayoutError, LayoutSpec
from kvmpage.layout.toml_file import AGENT_SLOT, agent_reserved, load_layout
from kvmpage.paging.access import CpuState

if TYPE_CHECKING:
    from kvmpage.machine import Machine
    from kvmpage.verify import Verifier

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
#: Version of the JSON documents the commands print with ``--json`` (docs/json-schema.md).
SCHEMA_VERSION = 1
BUILTIN = "builtin"
#: The software predictor the commands use (None: kvmpage's own). Tests set a deliberately wrong
#: one to check that a disagreement reaches the output and the exit status.
PREDICTOR: Any = None


class CliError(Exception):
    """A reason the command could not run (exit status 2); the message is shown as it is."""


def load_spec(arg: str | None, *, gbpages: bool = True) -> LayoutSpec:
    """The layout named on the command line: a TOML file, or the built-in one when omitted."""
    if arg is None or arg == BUILTIN:
        return builtin_layout(gbpages=gbpages)
    return load_layout(arg)


def alloc_end(spec: LayoutSpec) -> int | None:
    """Where allocation stops in a software build: below the agent's memory for a layout file,
    so that ``dump`` shows the same physical addresses ``verify`` uses."""
    if not spec.source:
        return None
    slot = min(spec.reserved_p4) if spec.reserved_p4 else AGENT_SLOT
    return agent_reserved(spec.memory_size, slot)[0]


def header(built: BuiltLayout) -> str:
    """One line that says which layout this is and how it was built."""
    spec = built.spec
    tables = built.allocator.in_use()
    extra = f", recursive slot {spec.recursive_index}" if spec.recursive_index is not None else ""
    where = f" ({spec.source})" if spec.source else ""
    return (
        f"layout {spec.name!r}{where}: {spec.kind} mapper, {human_size(spec.memory_size)} "
        f"physical memory, level-4 table at {built.p4_phys:#x}, {tables} table "
        f"frame{'s' if tables != 1 else ''}{extra}"
    )


def approx_size(n: int) -> str:
    """``1.1G``, ``70M``: a total for people, rounded to one decimal in the largest unit."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def cpu_line(cpu: CpuState) -> str:
    """The control-register state a layout runs under, as the registers name it."""
    return (
        f"cpu: CR0.WP={int(cpu.wp)} CR4.SMEP={int(cpu.smep)} CR4.SMAP={int(cpu.smap)} "
        f"EFER.NXE={int(cpu.nxe)} RFLAGS.AC={int(cpu.ac)}"
    )


def hexa(n: int) -> str:
    """An address in JSON: a hex string, exact in every JSON parser (doubles lose bits >2**53)."""
    return f"{n:#x}"


def layout_json(built: BuiltLayout) -> dict[str, Any]:
    """The ``layout`` object of every command's JSON."""
    spec = built.spec
    return {
        "name": spec.name,
        "source": spec.source or BUILTIN,
        "mapper": spec.kind,
        "memory_size": spec.memory_size,
        "phys_offset": hexa(spec.phys_offset) if spec.kind == "offset" else None,
        "recursive_index": spec.recursive_index,
        "p4_phys": hexa(built.p4_phys),
        "table_frames": built.allocator.in_use(),
        "cpu": {
            "wp": spec.cpu.wp,
            "smep": spec.cpu.smep,
            "smap": spec.cpu.smap,
            "nxe": spec.cpu.nxe,
            "ac": spec.cpu.ac,
        },
    }


def rights_json(run: Run) -> dict[str, bool]:
    return {
        "user": run.rights.user,
        "writable": run.rights.writable,
        "executable": run.rights.executable,
    }


def run_json(run: Run, names: Sequence[str] = ()) -> dict[str, Any]:
    """One coalesced run as JSON (the ``runs`` items of ``dump`` and ``verify``)."""
    return {
        "mappings": list(names),
        "virt": hexa(run.virt),
        "virt_end": hexa(run.virt_end - 1),
        "size": run.size,
        "page_size": run.page_size,
        "level": run.level,
        "count": run.count,
        "phys": hexa(run.phys),
        "flags": hexa(run.flags),
        "flag_names": flag_names(run.flags).split(),
        "rights": rights_json(run),
        "rights_text": str(run.rights),
    }


class MappingNames:
    """Which of a layout's mappings a run lies in: runs are coalesced by attributes, so they
    lose the names; a reader wants them back to find the line of the layout file."""

    def __init__(self, spec: LayoutSpec) -> None:
        items = sorted((m.virt, m.virt + m.length, re.sub(r"\[\d+\]$", "", m.name))
                       for m in spec.mappings)  # fmt: skip
        self._starts = [start for start, _, _ in items]
        self._items = items

    def of(self, virt: int, end: int) -> list[str]:
        """Names of the mappings overlapping ``[virt, end)``, in address order, once each."""
        i = max(bisect.bisect_right(self._starts, virt) - 1, 0)
        out: list[str] = []
        while i < len(self._items) and self._items[i][0] < end:
            _, stop, name = self._items[i]
            if stop > virt and name not in out:
                out.append(name)
            i += 1
        return out

    def of_runs(self, runs: Sequence[Run]) -> list[list[str]]:
        return [self.of(r.virt, r.virt_end) for r in runs]


LEVEL_NAME = {1: "4K", 2: "2M", 3: "1G"}
#: The table that holds a run's leaf entries (level 1, 2, 3).
TABLE_NAME = {1: "PT", 2: "PD", 3: "PDPT"}


def format_table(
    runs: Sequence[Run],
    names: Sequence[Sequence[str]],
    columns: Sequence[str] = (),
    cells: Sequence[Sequence[str]] = (),
) -> list[str]:
    """The run listing: virtual range, size, page size x count, the table level of the leaves,
    physical start, effective rights, leaf flags, then the extra ``columns`` (one cell per run
    each) and the names of the layout's mappings the run belongs to."""
    width = max((len(c) for c in columns), default=0) + 2
    head = (
        f"{'virtual start':>18}-{'end':<18} {'size':>6}  {'pages':<9} {'level':<5} "
        f"{'physical':>18}  "
        f"{'rights':6}  {'flags':<20}" + "".join(f"{c:>{width}}" for c in columns) + "  mapping"
    )
    lines = [head]
    for i, r in enumerate(runs):
        pages = f"{r.count}x{LEVEL_NAME[r.level]}"
        extra = "".join(f"{c:>{width}}" for c in cells[i]) if cells else ""
        lines.append(
            f"{r.virt:#018x}-{r.virt_end - 1:#018x} {human_size(r.size):>6}  {pages:<9} "
            f"{TABLE_NAME[r.level]:<5} {r.phys:#018x}  {r.rights!s:6}  "
            f"{flag_names(r.flags):<20}{extra}  " + ", ".join(names[i])
        )
    return lines


def finding_json(f: Finding) -> dict[str, Any]:
    """One W+X audit finding as JSON (``dump`` and ``verify``)."""
    return {
        "kind": f.kind,
        "phys": hexa(f.phys),
        "phys_end": hexa(f.phys_end - 1),
        "virt": hexa(f.virt),
        "other_virt": hexa(f.other_virt),
        "message": f.message,
    }


def emit_json(doc: dict[str, Any], out: TextIO | None = None) -> None:
    """Print one JSON document (with the schema version first) on stdout."""
    full = {"schema_version": SCHEMA_VERSION, **doc}
    print(json.dumps(full, indent=2), file=out or sys.stdout)


@dataclass
class Progress:
    """A one-line status on stderr, shown only when a run takes longer than ``delay`` seconds,
    only on a terminal, and never with ``--quiet``; the line is erased when the run ends."""

    enabled: bool
    delay: float = 1.0
    stream: TextIO | None = None

    def __post_init__(self) -> None:
        self._text = ""
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    @classmethod
    def for_args(cls, quiet: bool) -> Progress:
        return cls(enabled=not quiet and sys.stderr.isatty())

    def stage(self, text: str) -> None:
        """Say what is happening now."""
        self._text = text

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="kvmpage-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            self._out().write("\r\033[K")
            self._out().flush()

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _loop(self) -> None:
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._start
            self._out().write(f"\r\033[K{self._text} ({elapsed:.1f} s)")
            self._out().flush()
            self._shown = True
            self._stop.wait(0.1)


@contextmanager
def on_machine(
    spec: LayoutSpec, device: str, progress: Progress
) -> Iterator[tuple[Machine, BuiltLayout, Verifier]]:
    """Start a machine, build ``spec`` in its memory, and yield (machine, built, verifier).

    Everything that could make the run meaningless is refused first, with a `LayoutError`
    naming the key: a page size or a CPU feature the host cannot verify, physical ranges in the
    agent's memory. The machine is closed on every path.
    """
    from kvmpage.layout.spec import build, check_page_sizes, check_physical
    from kvmpage.machine import Machine, host_profile
    from kvmpage.verify import Verifier

    progress.stage("probing the host's paging features")
    profile = host_profile(device)
    gbpages = profile.supports("1gib-pages")
    if not spec.source:
        spec = builtin_layout(gbpages=gbpages) if spec.name == BUILTIN else spec
    else:
        check_page_sizes(spec, gbpages=gbpages)
        if not spec.cpu.nxe:
            raise LayoutError(
                f"{spec.source}: [cpu], key 'nxe': the verifier runs the guest with EFER.NXE "
                "set, so nxe = false cannot be checked on the CPU yet (kvmpage dump and "
                "walk --software-only accept it)"
            )
    for wanted, feature, key in (
        (spec.cpu.nxe, "nx", "nxe"),
        (spec.cpu.smep, "smep", "smep"),
        (spec.cpu.smap, "smap", "smap"),
    ):
        if wanted and not profile.supports(feature):
            evidence = profile.features.get(feature)
            why = f" ({evidence.evidence})" if evidence is not None else ""
            where = f"{spec.source}: [cpu], key {key!r}" if spec.source else "built-in layout"
            raise LayoutError(f"{where}: this host cannot verify {feature.upper()}{why}")
    progress.stage("starting the machine")
    slot = min(spec.reserved_p4) if spec.reserved_p4 else AGENT_SLOT
    with Machine(spec.memory_size, device=device, agent_slot=slot) as machine:
        spec = replace(spec, reserved_p4=spec.reserved_p4 | {machine.agent_slot})
        if spec.source:
            check_physical(spec, machine.reserved)
        progress.stage("building the tables")
        built = build(spec, machine.memory, alloc_end=machine.reserved[0])
        extra = {} if PREDICTOR is None else {"predictor": PREDICTOR}
        verifier = Verifier(built.mapper, machine, cpu=spec.cpu, keep_results=True, **extra)
        yield machine, built, verifier
