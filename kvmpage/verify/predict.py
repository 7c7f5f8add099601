"""The software side: what the architecture says each probe must do, from the tables in memory.

`Predictor.expect` walks the tables (or reuses the walk `kvmpage.layout.scan` already did for a
mapped page) and applies the permission model (`kvmpage.paging.access.evaluate`). The outcome
depends only on the flags and reserved bits of the walk's entries, not on the table addresses,
so it is computed once per distinct walk shape and reused: large layouts are predicted per
table, not per address, and exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kvmpage.layout.walk import walk
from kvmpage.memory import PhysMemory
from kvmpage.paging.access import (
    ADDRESS_MASK,
    CpuState,
    Features,
    Outcome,
    evaluate,
    is_canonical,
)
from kvmpage.verify.probes import Probe

_PS = 0x80


@dataclass(frozen=True, slots=True)
class Expectation:
    """A probe's predicted outcome, with the walk's entry addresses (PML4E first)."""

    outcome: Outcome
    entries: tuple[int, ...]
    entry_addrs: tuple[int, ...]

    @property
    def phys(self) -> int | None:
        return self.outcome.phys


class Predictor:
    """Predicts probes against the tables under ``p4_phys`` for one CPU state and host."""

    def __init__(self, memory: PhysMemory, p4_phys: int, cpu: CpuState, features: Features) -> None:
        self.memory = memory
        self.p4_phys = p4_phys
        self.cpu = cpu
        self.features = features
        # address bits that are not reserved: they do not change the outcome
        low = (1 << min(features.maxphyaddr, 52)) - 1
        self._ignore = ADDRESS_MASK & low
        self._cache: dict[tuple[object, ...], Outcome] = {}

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The raw entries of the probe's walk and their addresses."""
        if probe.leaf is not None:
            return probe.leaf.entries, probe.leaf.entry_addrs
        if not is_canonical(probe.va):
            return (), ()
        w = walk(self.memory, self.p4_phys, probe.va)
        return tuple(s.raw for s in w.steps), tuple(s.entry_addr for s in w.steps)

    def expect(self, probe: Probe) -> Expectation:
        """The architecture's outcome for ``probe``."""
        entries, addrs = self.walk_of(probe)
        return Expectation(self.evaluate(entries, probe), entries, addrs)

    def evaluate(self, entries: tuple[int, ...], probe: Probe) -> Outcome:
        """`evaluate` with a cache keyed on what can change the outcome (not the addresses)."""
        if not entries:
            return evaluate(
                entries, probe.va, access=probe.access, cpl=probe.cpl, cpu=self.cpu,
                features=self.features,
            )  # fmt: skip
        key = (self._shape(entries), probe.access, probe.cpl)
        outcome = self._cache.get(key)
        if outcome is None:
            outcome = evaluate(
                entries, probe.va, access=probe.access, cpl=probe.cpl, cpu=self.cpu,
                features=self.features,
            )  # fmt: skip
            self._cache[key] = outcome
        if outcome.fault is not None:
            if outcome.fault.cr2 == probe.va:
                return outcome
            return replace(outcome, fault=replace(outcome.fault, cr2=probe.va))
        span = outcome.page_size or 4096
        phys = (entries[-1] & ADDRESS_MASK & ~(span - 1)) | (probe.va & (span - 1))
        return outcome if phys == outcome.phys else replace(outcome, phys=phys)

    def _shape(self, entries: tuple[int, ...]) -> tuple[int, ...]:
        ignore = self._ignore
        last = len(entries) - 1
        out = []
        for i, raw in enumerate(entries):
            if i == last and raw & _PS and i in (1, 2):  # a huge leaf: bits 13.. are reserved
                out.append(raw & ~(ignore & ~((1 << (30 if i == 1 else 21)) - 1)))
            else:
                out.append(raw & ~ignore)
        return tuple(out)
