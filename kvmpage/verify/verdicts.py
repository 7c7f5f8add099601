"""Per-run verdicts: which oracle probed which run of a listing, and whether it agreed.

A verification keeps ``(address, oracle, agreed)`` for every check it made (`Verifier.last_checks`);
`run_verdicts` files them under the runs of a listing (and the holes between them), so that each
run of ``kvmpage verify``'s table shows ``ok`` or ``FAIL(n)`` per oracle.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpage.layout.dump import Run

if TYPE_CHECKING:
    from kvmpage.verify.verifier import Verifier


@dataclass
class RunVerdict:
    """Per oracle: how many probes of the run it answered, and how many disagreed."""

    probes: dict[str, int] = field(default_factory=dict)
    disagree: dict[str, int] = field(default_factory=dict)

    def add(self, oracle: str, agree: bool, count: int = 1) -> None:
        self.probes[oracle] = self.probes.get(oracle, 0) + count
        if not agree:
            self.disagree[oracle] = self.disagree.get(oracle, 0) + count

    def merge(self, other: RunVerdict) -> None:
        for k, n in other.probes.items():
            self.probes[k] = self.probes.get(k, 0) + n
        for k, n in other.disagree.items():
            self.disagree[k] = self.disagree.get(k, 0) + n

    def cell(self, oracle: str) -> str:
        if oracle not in self.probes:
            return "-"
        return f"FAIL({self.disagree[oracle]})" if oracle in self.disagree else "ok"

    @property
    def verdict(self) -> str:
        if self.disagree:
            return "disagree"
        return "agree" if self.probes else "unprobed"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "oracles": {
                k: {"probes": n, "disagree": self.disagree.get(k, 0)}
                for k, n in sorted(self.probes.items())
            },
        }


def run_verdicts(runs: Sequence[Run], verifier: Verifier) -> tuple[list[RunVerdict], RunVerdict]:
    """Each run's verdict per oracle, and the holes' (probes that hit no run).

    The verdicts are the verifier's own checks of the last run (`Verifier.last_checks`): every
    probe, then every KVM_TRANSLATE of its sample.
    """
    return verdicts_of(runs, verifier.last_checks)


def verdicts_of(
    runs: Sequence[Run], checks: Iterable[tuple[int, str, bool]]
) -> tuple[list[RunVerdict], RunVerdict]:
    """`run_verdicts` of any ``(address, oracle, agreed)`` checks (several verifiers')."""
    starts = [r.virt for r in runs]
    verdicts = [RunVerdict() for _ in runs]
    holes = RunVerdict()
    counts: Counter[tuple[int, str, bool]] = Counter()  # (run index or -1, oracle, agree)
    lo = hi = 0  # the run of the previous check: checks come mostly in address order
    index = -1
    for va, oracle, agree in checks:
        if not lo <= va < hi:
            i = bisect.bisect_right(starts, va) - 1
            if i >= 0 and va < runs[i].virt_end:
                index, lo, hi = i, runs[i].virt, runs[i].virt_end
            else:
                index, lo, hi = -1, 0, 0
        counts[index, oracle, agree] += 1
    for (i, oracle, agree), n in counts.items():
        (verdicts[i] if i >= 0 else holes).add(oracle, agree, n)
    return verdicts, holes
