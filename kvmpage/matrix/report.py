"""The matrix's results: counts, disagreements grouped by (field, expected, actual), the values
each dimension covered, and the JSON document of ``kvmpage matrix --json`` (also what
``--merge`` reads back and combines)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kvmpage.matrix import dims
from kvmpage.matrix.dims import Row

#: Disagreements kept in full (the rest are counted in the groups).
DEFAULT_LIMIT = 1000


@dataclass
class Disagreement:
    """One field of one combination where the CPU and the model differ.

    ``expected`` and ``actual`` are short and shared by similar failures (they group the
    summary); ``detail`` has the exact values."""

    row: Row
    field: str
    expected: str
    actual: str
    oracle: str
    va: int
    detail: str
    model: str
    entries: list[tuple[str, int, int, int]]  #: (level, entry address, before, after)

    def as_json(self) -> dict[str, Any]:
        return {
            "combination": dims.as_dict(self.row),
            "text": dims.describe(self.row),
            "field": self.field,
            "expected": self.expected,
            "actual": self.actual,
            "oracle": self.oracle,
            "va": f"{self.va:#x}",
            "detail": self.detail,
            "model": self.model,
            "entries": [
                {"level": lv, "address": f"{at:#x}", "before": f"{b:#x}", "after": f"{a:#x}"}
                for lv, at, b, a in self.entries
            ],
        }

    def format(self) -> str:
        lines = [
            f"{self.field}: expected {self.expected}, got {self.actual} [{self.oracle}] "
            f"at {self.va:#x} ({self.detail}; model: {self.model})",
            f"  {dims.describe(self.row)}",
        ]
        for lv, at, b, a in self.entries:
            change = "" if a == b else f" -> {a:#018x}"
            lines.append(f"  {lv:<5} @ {at:#012x} = {b:#018x}{change}")
        return "\n".join(lines)


@dataclass
class Totals:
    """What one run (or one job, or one shard) found."""

    checked: int = 0
    probes: int = 0  #: accesses checked (a ``twice`` combination makes two)
    runs: int = 0
    recycles: int = 0
    seconds: float = 0.0
    guest_seconds: float = 0.0  #: time in KVM_RUN
    host_seconds: float = 0.0  #: CPU time building and checking batches (overlaps the guest)
    model_calls: int = 0
    oracles: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    groups: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    disagreement_count: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    #: CPU/access parts and (EFER.NXE, entry parts) of the rows checked (for `covered`)
    heads: set[Row] = field(default_factory=set)
    walks: set[tuple[int, Row]] = field(default_factory=set)

    def add(self, d: Disagreement, limit: int) -> None:
        self.disagreement_count += 1
        self.groups[d.field, d.expected, d.actual] += 1
        if len(self.disagreements) < limit:
            self.disagreements.append(d)

    def merge(self, other: Totals, limit: int) -> None:
        """Add ``other`` (another job's totals) into this one."""
        self.checked += other.checked
        self.probes += other.probes
        self.runs += other.runs
        self.recycles += other.recycles
        self.model_calls += other.model_calls
        self.guest_seconds += other.guest_seconds
        self.host_seconds += other.host_seconds
        self.oracles.update(other.oracles)
        self.skipped.update(other.skipped)
        self.groups.update(other.groups)
        self.disagreement_count += other.disagreement_count
        room = max(0, limit - len(self.disagreements))
        self.disagreements += other.disagreements[:room]
        self.heads |= other.heads
        self.walks |= other.walks

    def covered(self) -> dict[str, set[str]]:
        """Per dimension, the values some checked combination used where its walk reads them."""
        out: dict[str, set[str]] = {d.name: set() for d in dims.DIMENSIONS}
        for head in self.heads:
            for c in range(dims.ENTRY_START):
                out[dims.NAMES[c]].add(dims.DIMENSIONS[c].values[head[c]])
        for nxe, entries in self.walks:
            row = list(dims.DEFAULT_ROW)
            row[dims.C_NXE] = nxe
            row[dims.ENTRY_START :] = entries
            full = tuple(row)
            for c in dims.effective_columns(full):
                if c >= dims.ENTRY_START:
                    out[dims.NAMES[c]].add(dims.DIMENSIONS[c].values[full[c]])
        return out


def dimensions_json(covered: dict[str, set[str]], unavailable: dict[str, str]) -> dict[str, Any]:
    """``dimensions``: each dimension's values covered, in order, and the values not covered
    with why (the host cannot run them, or the selection did not reach them)."""
    out: dict[str, Any] = {}
    for d in dims.DIMENSIONS:
        got = covered.get(d.name, set())
        missing = {v: _why_missing(d.name, v, unavailable) for v in d.values if v not in got}
        out[d.name] = {"covered": [v for v in d.values if v in got], "missing": missing}
    return out


def _why_missing(name: str, value: str, unavailable: dict[str, str]) -> str:
    gb_only = (name == "pdpte.rsvd" and value.startswith("b") and value != "b51") or (
        name == "pdpte.d" and value == "1"
    )
    if gb_only and "1gib-pages" in unavailable:
        return "needs a 1 GiB leaf: 1gib-pages is unavailable here"
    for feature in ("smep", "smap", "nx"):
        if feature in name and feature in unavailable:
            return f"{feature} is unavailable here"
    if value in ("b51", "maxphy") and "reserved-address-bits" in unavailable:
        return "no reserved address bit on this host"
    return "not in the combinations checked"


def summary_json(groups: Counter[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [
        {"field": f, "expected": e, "actual": a, "count": n}
        for (f, e, a), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
