"""The software side: what the architecture says each probe must do, from the tables in memory.

`Predictor.expect` walks the tables (or reuses the walk `kvmpage.paging.leaves.scan` already did
for a mapped page) and applies the permission model (`kvmpage.paging.access.evaluate`). The outcome
depends only on the flags and reserved bits of the walk's entries, not on the table addresses,
so it is computed once per distinct walk shape and reused: large layouts are predicted per
table, not per address, and exactly. The physical address (and CR2) of each probe is then
derived from its own leaf entry and address.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmpage.memory import PhysMemory
from kvmpage.paging.access import (
    ADDRESS_MASK,
    AccessKind,
    CpuState,
    Features,
    Outcome,
    evaluate,
    is_canonical,
)
from kvmpage.paging.walk import walk
from kvmpage.verify.probes import Probe

_READ = AccessKind.READ

_PS = 0x80


class Expectation(NamedTuple):
    """A probe's prediction.

    ``outcome`` may be shared by many probes of the same walk shape: its ``phys`` and its
    fault's ``cr2`` belong to the first of them. Use ``phys`` here and the probe's own address
    as the expected CR2. The walk is kept as its last entry plus the entries above it (a tuple
    shared by every page of a table).
    """

    outcome: Outcome
    phys: int | None
    parents: tuple[int, ...]  #: raw entries above the last one, PML4E first
    parent_addrs: tuple[int, ...]  #: their physical addresses
    last: int | None  #: the last entry read (leaf or not present); None when nothing was read
    last_addr: int | None

    @property
    def entries(self) -> tuple[int, ...]:
        """Raw entries of the walk, PML4E first."""
        return self.parents if self.last is None else (*self.parents, self.last)

    @property
    def entry_addrs(self) -> tuple[int, ...]:
        """Their physical addresses."""
        tail = () if self.last_addr is None else (self.last_addr,)
        return (*self.parent_addrs, *tail)


class Predictor:
    """Predicts probes against the tables under ``p4_phys`` for one CPU state and host.

    Subclass and override `walk_of` (what the software believes the tables hold) or `evaluate`
    (what it believes they mean) to model a different, for example a deliberately wrong, walk.

    A predictor reads the tables as they are when it first walks a page and keeps that walk:
    make a new one when the tables change (a verification makes its own).
    """

    def __init__(self, memory: PhysMemory, p4_phys: int, cpu: CpuState, features: Features) -> None:
        self.memory = memory
        self.p4_phys = p4_phys
        self.cpu = cpu
        self.features = features
        # address bits below MAXPHYADDR are not reserved: they never change the outcome
        self._ignore = ADDRESS_MASK & ((1 << min(features.maxphyaddr, 52)) - 1)
        # A huge leaf's low address bits are reserved: keyed by how many entries lie above it,
        # which depends on the depth (a 1 GiB leaf has the PML4 above it, and the PML5 too
        # under LA57), else two leaves that differ in reserved bits would share an outcome.
        extra = cpu.levels - 4
        self._huge_ignore = {
            1 + extra: self._ignore & ~((1 << 30) - 1),
            2 + extra: self._ignore & ~((1 << 21) - 1),
        }
        self._cache: dict[tuple[object, ...], Outcome] = {}
        self._parents: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._walks: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # subclasses that change the walk or its meaning take the general path
        cls = type(self)
        self._plain = cls.walk_of is Predictor.walk_of and cls.evaluate is Predictor.evaluate

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The raw entries of the probe's walk and their addresses."""
        if probe.leaf is not None:
            return probe.leaf.entries, probe.leaf.entry_addrs
        if not is_canonical(probe.va, self.cpu.levels):
            return (), ()
        page = probe.va >> 12  # every access to a page walks the same entries
        found = self._walks.get(page)
        if found is None:
            w = walk(self.memory, self.p4_phys, probe.va, self.cpu, self.features)
            found = w.entries, w.entry_addrs
            self._walks[page] = found
        return found

    def expect(self, probe: Probe) -> Expectation:
        """The architecture's outcome for ``probe``."""
        leaf = probe.leaf
        if leaf is not None and self._plain:  # fast path: the scan's walk, shared parents
            parents, addrs, last, last_addr = (
                leaf.parents, leaf.parent_addrs, leaf.raw, leaf.entry_addr
            )  # fmt: skip
            outcome = self._outcome(parents, last, probe.va, probe.access, probe.cpl)
        else:
            entries, all_addrs = self.walk_of(probe)
            outcome = self.evaluate(entries, probe)
            if not entries:
                return Expectation(outcome, None, (), (), None, None)
            parents, addrs = entries[:-1], all_addrs[:-1]
            last, last_addr = entries[-1], all_addrs[-1]
        phys = None
        if outcome.fault is None:
            span = outcome.page_size or 4096
            phys = (last & ADDRESS_MASK & ~(span - 1)) | (probe.va & (span - 1))
        return Expectation(outcome, phys, parents, addrs, last, last_addr)

    @property
    def plain(self) -> bool:
        """Whether this is the architecture's own walk (no subclass changes it): then pages
        can be predicted in bulk from their scan."""
        return self._plain

    def bulk_reads(
        self,
        parents: tuple[int, ...],
        raws: list[int],
        vas: list[int],
        *,
        same_shape: bool = False,
    ) -> tuple[Outcome | None, list[Outcome]]:
        """The outcomes of CPL3 reads at ``vas`` through the leaf entries ``raws`` below
        ``parents`` (a plain predictor only), and the one outcome they all share if they do:
        entries that differ only in address bits walk the same shape. ``same_shape``: the
        caller knows they do (their flags are identical)."""
        if not raws:
            return None, []
        first = raws[0]
        keep = ~self._ignore
        if not first & _PS or len(parents) not in self._huge_ignore:
            key = first & keep
            if same_shape or all(raw & keep == key for raw in raws):
                outcome = self._outcome(parents, first, vas[0], _READ, 3)
                return outcome, [outcome] * len(raws)
        outcomes = [
            self._outcome(parents, r, va, _READ, 3) for r, va in zip(raws, vas, strict=True)
        ]
        return None, outcomes

    def evaluate(self, entries: tuple[int, ...], probe: Probe) -> Outcome:
        """`kvmpage.paging.access.evaluate`, cached on what can change the outcome."""
        if not entries:
            return self._evaluate(entries, probe)
        return self._outcome(entries[:-1], entries[-1], probe.va, probe.access, probe.cpl)

    def _outcome(
        self, parents: tuple[int, ...], last: int, va: int, access: AccessKind, cpl: int
    ) -> Outcome:
        shape = self._parents.get(parents)
        if shape is None:
            shape = self._parents[parents] = tuple(raw & ~self._ignore for raw in parents)
        i = len(parents)
        ignore = self._huge_ignore.get(i, self._ignore) if last & _PS else self._ignore
        key = (shape, last & ~ignore, access, cpl)
        outcome = self._cache.get(key)
        if outcome is None:
            outcome = self._cache[key] = evaluate(
                (*parents, last), va, access=access, cpl=cpl, cpu=self.cpu,
                features=self.features,
            )  # fmt: skip
        return outcome

    def _evaluate(self, entries: tuple[int, ...], probe: Probe) -> Outcome:
        return evaluate(
            entries,
            probe.va,
            access=probe.access,
            cpl=probe.cpl,
            cpu=self.cpu,
            features=self.features,
        )
