"""What the permission model says about a combination, in the form the checks need.

The model is `kvmpage.paging.access.evaluate` (or any function with its signature: a test
passes a deliberately wrong one). It is asked with the walk's entries as the combination sets
them (flags only: the tables' and frames' addresses take no part in the architecture's
permission rules) and a small canonical address; the run puts back the real address (CR2) and
the real frame (the leaf's address plus the offset inside the page size the model reports).
Answers are cached: every combination is distinct, but the same entries, CPU state, CPL and
access recur across ``twice`` and across the priming read of ``twice``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvmpage.matrix import dims
from kvmpage.matrix.dims import Row
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.paging.access import AccessKind, CpuState, Features, Outcome, evaluate

Model = Callable[..., Outcome]
ACCESS_KINDS = (AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH)
#: Where each access probes inside its 4 KiB page (a write goes to a slot of its own, see
#: `kvmpage.matrix.arena.write_offset`).
READ_OFFSET = 0x0
FETCH_OFFSET = 0x40
_A, _D = dims.A, dims.D
_SERIALS = itertools.count()


@dataclass(frozen=True, slots=True)
class EntryConfig:
    """The entries a combination writes, PML4E first, as flags without an address.

    ``leaf`` is the level (1-3) of the last written entry when it is a leaf-type entry (the
    PTE, or PS set), else 0; entries stop at the first non-present entry or leaf-type entry.
    """

    flags: tuple[int, ...]
    leaf: int
    key: int = -1  #: unique per configuration of a run (a cheap cache key)


def entry_config(row: Row, host: HostFacts, key: int = -1) -> EntryConfig:
    """The entries ``row`` (normalized) writes; ``key`` names the configuration in caches."""
    flags: list[int] = []
    table_attr = dims.table_attr_bits(row)
    for level in dims.LEVELS:
        col = dims.COL
        bits = 0
        for name, bit in (("p", dims.P), ("w", dims.W), ("u", dims.U), ("a", dims.A)):
            if row[col[level, name]]:
                bits |= bit
        if row[col[level, "nx"]]:
            bits |= dims.NX
        rsvd = dims.rsvd_name(row, level)
        if rsvd != "none":
            bits |= host.rsvd_bit(rsvd)
        leaf = dims.is_leaf(row, level)
        if level in ("pdpte", "pde") and row[col[level, "ps"]]:
            bits |= dims.PS
        if leaf:
            if row[col[level, "d"]]:
                bits |= dims.D
            bits |= dims.leaf_attr_bits(row, level)
        else:
            bits |= table_attr
        flags.append(bits)
        if leaf or not bits & dims.P:
            return EntryConfig(tuple(flags), dims.LEVEL_OF[level] if leaf else 0, key)
    raise AssertionError("unreachable: the PTE is a leaf")


@dataclass(frozen=True, slots=True)
class Expected:
    """One access's expected result: ``vector`` 0 (completes), 14 (#PF) or another vector,
    the error code, the page size reached (0 on a fault), and per level of the walk (bit L for
    level L) whether its A bit must be set, may be set, and whether D must be set."""

    vector: int
    error: int
    span: int
    walked: int
    a_must: int
    a_may: int
    d_must: int
    reason: str
    serial: int  #: unique in the process: a key that outlives the cache
    #: per level 4..1: (bits the access must set, bits it may set) of the entry: A where the
    #: model says must / may, D where it must; every other bit must stay as it was
    ad: tuple[tuple[int, int], ...] = ()


def _levels(levels: Sequence[int] | frozenset[int]) -> int:
    out = 0
    for lv in levels:
        out |= 1 << lv
    return out


class Expectations:
    """The model's answers for one host and one CPU state at a time (`switch`), cached per
    (CPL, access, entry configuration): configurations must carry distinct keys."""

    def __init__(self, host: HostFacts, model: Model | None = None) -> None:
        self.host = host
        self.model: Model = model if model is not None else evaluate
        self.features: Features = host.features
        self._cache: dict[tuple[int, ...] | int, Expected] = {}
        self._state = CpuState()
        self.calls = 0

    def switch(self, cpu: tuple[int, ...]) -> None:
        """Answer for CPU state ``cpu`` (a row's CPU columns) from now on; forgets the cache."""
        wp, nxe, smep, smap, ac = (bool(v) for v in cpu)
        self._state = CpuState(wp=wp, smep=smep, smap=smap, nxe=nxe, ac=ac)
        self._cache.clear()

    def get(self, cpl: int, access: int, cfg: EntryConfig) -> Expected:
        """The expected result of ``access`` (an index of `ACCESS_KINDS`) at ``cpl`` through
        ``cfg`` in the current CPU state."""
        key: tuple[int, ...] | int
        if cfg.key >= 0:
            key = cfg.key << 3 | (4 if cpl == 3 else 0) | access
        else:
            key = (cpl, access, *cfg.flags)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        self.calls += 1
        state = self._state
        kind = ACCESS_KINDS[access]
        va = FETCH_OFFSET if kind is AccessKind.FETCH else READ_OFFSET
        out = self.model(
            cfg.flags,
            va,
            access=kind,
            cpl=cpl,
            cpu=state,
            features=self.features,
        )
        fault = out.fault
        a_must, a_may, d_must = _levels(out.a_must), _levels(out.a_may), _levels(out.d_must)
        exp = Expected(
            vector=fault.vector if fault is not None else 0,
            error=fault.error_code if fault is not None else 0,
            span=(out.page_size or 0) if fault is None else 0,
            walked=_levels(out.levels),
            a_must=a_must,
            a_may=a_may,
            d_must=d_must,
            reason=out.reason,
            serial=next(_SERIALS),
            ad=_ad(a_must, a_may, d_must),
        )
        self._cache[key] = exp
        return exp


def _ad(a_must: int, a_may: int, d_must: int) -> tuple[tuple[int, int], ...]:
    """`Expected.ad` from the level sets (bit L for level L)."""
    out = []
    for lv in (4, 3, 2, 1):
        must = (_A if a_must >> lv & 1 else 0) | (_D if d_must >> lv & 1 else 0)
        out.append((must, _A & ~must if a_may >> lv & 1 else 0))
    return tuple(out)


def combined_ad(first: Expected, then: Expected) -> tuple[tuple[int, int], ...]:
    """The A/D rule of two accesses in a row (a priming read, then the access): a bit one of
    them must set must be set; one that either may set and neither must, may be."""
    (m4, y4), (m3, y3), (m2, y2), (m1, y1) = first.ad
    (n4, z4), (n3, z3), (n2, z2), (n1, z1) = then.ad
    return (
        (m4 | n4, (y4 | z4) & ~(m4 | n4)),
        (m3 | n3, (y3 | z3) & ~(m3 | n3)),
        (m2 | n2, (y2 | z2) & ~(m2 | n2)),
        (m1 | n1, (y1 | z1) & ~(m1 | n1)),
    )
