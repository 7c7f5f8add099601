"""How the commands print: run tables, headers, and the JSON documents of ``--json``.

Addresses in JSON are hex strings (`hexa`): many JSON readers hold numbers as doubles and
would lose the low bits of a 64-bit address. The schema is ``docs/json-schema.json``. Text that
comes from a layout file (names, the path) is printed through `printable`, so that control
characters in it cannot forge lines of the output.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from kvmpage.cli.guard import printable
from kvmpage.layout.audit import Finding
from kvmpage.layout.dump import Run, flag_names, human_size
from kvmpage.layout.spec import BuiltLayout, LayoutSpec
from kvmpage.paging.access import CpuState
from kvmpage.paging.walk import Rights

#: Version of the JSON documents the commands print with ``--json`` (docs/json-schema.md).
#: 2: every address is a hex string, the embedded verifier report's too.
SCHEMA_VERSION = 2
BUILTIN = "builtin"


def header(built: BuiltLayout) -> str:
    """One line that says which layout this is and how it was built."""
    spec = built.spec
    tables = built.allocator.in_use()
    extra = f", recursive slot {spec.recursive_index}" if spec.recursive_index is not None else ""
    slot = min(spec.reserved_p4) if spec.reserved_p4 else 511
    levels = spec.cpu.levels
    if spec.agent_slot_chosen and slot != 511:
        extra += f", agent in level-{levels} slot {slot} (511 is the layout's)"
    where = f" ({printable(spec.source)})" if spec.source else ""
    return (
        f"layout {spec.name!r}{where}: {spec.kind} mapper, {human_size(spec.memory_size)} "
        f"physical memory, level-{levels} table at {built.p4_phys:#x}, {tables} table "
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
        + (" CR4.LA57=1 (5-level paging)" if cpu.la57 else "")
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
            "la57": spec.cpu.la57,
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
    size = run.page_size * run.count
    rights, rights_text = _rights_json(run.rights)
    return {
        "mappings": list(names),
        "virt": f"{run.virt:#x}",
        "virt_end": f"{run.virt + size - 1:#x}",
        "size": size,
        "page_size": run.page_size,
        "level": run.level,
        "count": run.count,
        "phys": f"{run.phys:#x}",
        "flags": f"{run.flags:#x}",
        "flag_names": _flag_list(run.flags),
        "rights": rights,
        "rights_text": rights_text,
    }


@functools.lru_cache(maxsize=16)
def _rights_json(rights: Rights) -> tuple[dict[str, bool], str]:
    """(read-only use: shared by every run with these rights)"""
    as_dict = {"user": rights.user, "writable": rights.writable, "executable": rights.executable}
    return as_dict, str(rights)


@functools.lru_cache(maxsize=4096)
def _flag_list(flags: int) -> tuple[str, ...]:
    return tuple(flag_names(flags).split())


class MappingNames:
    """Which of a layout's mappings a run lies in: runs are coalesced by attributes, so they
    lose the names; a reader wants them back to find the line of the layout file."""

    def __init__(self, spec: LayoutSpec) -> None:
        items = sorted((m.virt, m.virt + m.length, _base_name(m.name))
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


def _base_name(name: str) -> str:
    """A mapping's name without the ``[n]`` that ``page_size = "largest"`` appends to pieces."""
    return re.sub(r"\[\d+\]$", "", name) if name.endswith("]") else name


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
    size_text, flags_text = _cached_size, flag_names
    for i, r in enumerate(runs):
        size = r.page_size * r.count
        pages = f"{r.count}x{LEVEL_NAME[r.level]}"
        extra = "".join(f"{c:>{width}}" for c in cells[i]) if cells else ""
        lines.append(
            f"{r.virt:#018x}-{r.virt + size - 1:#018x} {size_text(size):>6}  {pages:<9} "
            f"{TABLE_NAME[r.level]:<5} {r.phys:#018x}  {r.rights!s:6}  "
            f"{flags_text(r.flags):<20}{extra}  " + ", ".join(map(printable, names[i]))
        )
    return lines


_cached_size = functools.lru_cache(maxsize=1024)(human_size)


def findings_lines(findings: Sequence[Finding], limit: int) -> list[str]:
    """The audit in text: a count per kind, then up to ``limit`` findings."""
    if not findings:
        return [
            "audit: no finding (W+X, also across aliases; user pages in the kernel half; "
            "writable page tables)"
        ]
    kinds: dict[str, int] = {}
    for f in findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    parts = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    lines = [f"audit: {len(findings)} finding{'s' if len(findings) > 1 else ''} ({parts})"]
    lines += [f"  {f.kind:<21} {printable(f.message)}" for f in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"  ... {len(findings) - limit} more (see --json; --allow KIND drops a kind)")
    return lines


def audit_summary(findings: Sequence[Finding]) -> str:
    """One line for ``verify``: the audit's count per kind."""
    return findings_lines(findings, 0)[0] + ("; details: kvmpage dump" if findings else "")


def finding_json(f: Finding) -> dict[str, Any]:
    """One audit finding as JSON (``dump`` and ``verify``)."""
    return {
        "kind": f.kind,
        "phys": hexa(f.phys),
        "phys_end": hexa(f.phys_end - 1),
        "virt": hexa(f.virt),
        "other_virt": hexa(f.other_virt),
        "message": f.message,
    }


def emit_json(doc: dict[str, Any], out: TextIO | None = None) -> None:
    """Print one JSON document (with the schema version first) on stdout.

    Indented for people, except that a long list of objects (runs, faults...) gets one
    compact object per line: that keeps a 75,000-run listing readable line by line, and lets
    the C encoder do the work (``indent`` alone falls back to the pure-Python one, ten times
    slower).
    """
    full = {"schema_version": SCHEMA_VERSION, **doc}
    (out or sys.stdout).write(_encode(full, "") + "\n")


_ROW = json.JSONEncoder(separators=(", ", ": "))
_C_ROW = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _ROW.default,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        True,
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)  # (one C encoder for every row: making one per object costs more than the encoding)


def _rows(values: list[Any]) -> Iterator[str]:
    """Each value compactly encoded (with the C encoder when Python has it)."""
    if _C_ROW is None:
        yield from map(_ROW.encode, values)
        return
    for v in values:
        yield "".join(_C_ROW(v, 0))


class Rows(list[str]):
    """Objects already encoded as compact JSON, one per item: `emit_json` writes them one per
    line. A listing of tens of thousands of runs is written this way (`run_row`): an f-string
    per run is several times faster than a dict per run through the encoder."""


def run_row(run: Run, names: Sequence[str] = (), extra: str = "") -> str:
    """`run_json` of ``run`` already encoded (``extra``: more ``, "key": value`` pairs)."""
    size = run.page_size * run.count
    rights, text = _rights_row(run.rights)
    mappings = json.dumps(list(names)) if names else "[]"
    return (
        f'{{"mappings": {mappings}, "virt": "{run.virt:#x}", '
        f'"virt_end": "{run.virt + size - 1:#x}", "size": {size}, '
        f'"page_size": {run.page_size}, "level": {run.level}, "count": {run.count}, '
        f'"phys": "{run.phys:#x}", "flags": "{run.flags:#x}", '
        f'"flag_names": {_flag_row(run.flags)}, "rights": {rights}, "rights_text": {text}'
        f"{extra}}}"
    )


@functools.lru_cache(maxsize=16)
def _rights_row(rights: Rights) -> tuple[str, str]:
    as_dict, text = _rights_json(rights)
    return json.dumps(as_dict), json.dumps(text)


@functools.lru_cache(maxsize=4096)
def _flag_row(flags: int) -> str:
    return json.dumps(list(_flag_list(flags)))


def _encode(value: Any, pad: str) -> str:
    inner = pad + "  "
    if isinstance(value, Rows):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + row for row in value) + f"\n{pad}]"
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k)}: {_encode(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if len(value) > 16:
            rows = (inner + encoded for encoded in _rows(value))
            return "[\n" + ",\n".join(rows) + f"\n{pad}]"
        return "[\n" + ",\n".join(inner + _encode(v, inner) for v in value) + f"\n{pad}]"
    return json.dumps(value, indent=2).replace("\n", "\n" + pad)
