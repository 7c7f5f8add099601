"""The verification report: counts per oracle, unavailable features, coverage, disagreements.

`Report.to_dict` is JSON-serialisable (schema version `SCHEMA_VERSION`): addresses are hex
strings, as everywhere in kvmpage's JSON (a reader that holds numbers as doubles, jq or
JavaScript, would round a 64-bit address); `Report.format` is the text a person reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kvmpage.verify.probes import Coverage

#: 2: addresses (a disagreement's ``va``) are hex strings; the coverage has ``probed`` and
#: ``complete``.
SCHEMA_VERSION = 2


@dataclass
class Disagreement:
    """One probe (or one entry's A/D bits) where the CPU and the software differ."""

    kind: str  #: "probe", "accessed-dirty" or "translate"
    va: int
    access: str
    cpl: int | None
    oracle: str
    expected: str
    actual: str
    why: str
    software_walk: list[str]
    hardware_walk: list[str]
    note: str = ""

    def format(self) -> str:
        head = f"DISAGREE [{self.oracle}] {self.access}"
        head += f"@cpl{self.cpl}" if self.cpl is not None else ""
        lines = [
            f"{head} {self.va:#x}: {self.why}",
            f"  software: {self.expected}",
            f"  hardware: {self.actual}",
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        lines.append("  software walk (tables as kvmpage built them):")
        lines += ["  " + s for s in self.software_walk]
        side = "tcg side" if self.oracle == "tcg" else "hardware side"
        translate = any("KVM_TRANSLATE" in line for line in self.hardware_walk)
        also = ", KVM_TRANSLATE" if translate else ""
        lines.append(f"  {side} (tables in guest memory after the run{also}):")
        lines += ["  " + s for s in self.hardware_walk]
        return "\n".join(lines)


@dataclass
class OracleCount:
    probes: int = 0
    agree: int = 0
    disagree: int = 0


@dataclass
class Report:
    """Everything one verification found."""

    host: str
    oracles: dict[str, OracleCount] = field(default_factory=dict)
    disagreements: list[Disagreement] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    coverage: Coverage = field(default_factory=Coverage)
    entries_checked: int = 0
    #: tags and fetch stubs read back after the run (each must be unchanged)
    data_checked: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: mappings that could not be verified as such, by reason (e.g. 1 GiB pages on this host)
    unverified: dict[str, int] = field(default_factory=dict)

    def add_count(self, oracle: str, agree: bool, n: int) -> None:
        """Count ``n`` checks by ``oracle`` that agreed (or not)."""
        if n == 0:
            return
        c = self.oracles.setdefault(oracle, OracleCount())
        c.probes += n
        if agree:
            c.agree += n
        else:
            c.disagree += n

    @property
    def probes(self) -> int:
        return sum(c.probes for c in self.oracles.values())

    @property
    def agreements(self) -> int:
        return sum(c.agree for c in self.oracles.values())

    @property
    def ok(self) -> bool:
        """Whether hardware agreed on everything that was checked."""
        return not self.disagreements

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (addresses as hex strings)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "host": self.host,
            "ok": self.ok,
            "probes": self.probes,
            "agreements": self.agreements,
            "disagreement_count": len(self.disagreements),
            "oracles": {k: asdict(v) for k, v in sorted(self.oracles.items())},
            "entries_checked": self.entries_checked,
            "data_checked": self.data_checked,
            "unavailable": dict(self.unavailable),
            "unverified": dict(self.unverified),
            "coverage": asdict(self.coverage),
            "seconds": dict(self.seconds),
            "disagreements": [{**asdict(d), "va": f"{d.va:#x}"} for d in self.disagreements],
        }

    def summary(self) -> str:
        """One line: probes, agreements, disagreements, unavailable features, time."""
        per = ", ".join(f"{k} {v.agree}/{v.probes}" for k, v in sorted(self.oracles.items()))
        unavailable = ", ".join(sorted(self.unavailable)) or "none"
        total = sum(self.seconds.values())
        return (
            f"{self.probes} probes, {self.agreements} agree, {len(self.disagreements)} disagree "
            f"({per}); {self.entries_checked} entries' A/D and {self.data_checked} tags checked; "
            f"unavailable: {unavailable}; "
            f"{total:.2f} s"
        )

    def format(self, *, limit: int = 20) -> str:
        """The report as text; at most ``limit`` disagreements in full."""
        lines = [f"host: {self.host}", f"coverage: {self.coverage.strategy}"]
        for name, why in sorted(self.unavailable.items()):
            lines.append(f"unavailable: {name}: {why}")
        for reason, n in sorted(self.unverified.items()):
            lines.append(f"not verified: {n} {reason}")
        for reason, n in sorted(self.coverage.skipped.items()):
            lines.append(f"skipped: {n} probes: {reason}")
        for d in self.disagreements[:limit]:
            lines.append(d.format())
        if len(self.disagreements) > limit:
            lines.append(f"... {len(self.disagreements) - limit} more disagreements")
        lines.append(self.summary())
        return "\n".join(lines)
