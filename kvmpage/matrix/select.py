"""Which combinations a run checks: a seeded sample, or the full matrix; and shards of either.

- ``full``: the cross product of the dimensions kvm-unit-tests' access test varies (the PTE and
  PDE bits, PDPTE.W, CPL, access, twice, CR0.WP, EFER.NXE, the reserved bits) with CR4.SMEP,
  CR4.SMAP and RFLAGS.AC added, then the pairwise covering array of every dimension
  (`kvmpage.matrix.cover`), which brings every pair of values of the upper levels' dimensions.
- ``sample``: the covering array (every value of every dimension, every pair), topped up with
  seeded random combinations drawn dimension by dimension (the values that end a walk early,
  P=0 and reserved bits, less often, so that deep walks stay common).

A selection is an ordered list that is the same on every host. Shard K of N takes the
combinations whose position modulo N is K-1, so the same seed gives the same disjoint parts
everywhere; what a host cannot run is filtered later, with the reason counted.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from kvmpage.matrix import dims
from kvmpage.matrix.cover import covering_array
from kvmpage.matrix.dims import Row

MODES = ("sample", "full")
_CORE_PDE = ("p", "w", "u", "nx", "a", "d", "ps", "rsvd")
_CORE_PTE = ("p", "w", "u", "nx", "a", "d", "rsvd")
_NOT_WALKED = "not walked: the entries below where the walk stops do not change the test"


@dataclass(frozen=True)
class Selection:
    """What to check: ``mode`` (``sample`` of ``size`` or ``full``), the ``seed``, and the
    ``shard`` (K, N): the K-th of N disjoint parts (1-based)."""

    mode: str = "sample"
    size: int = 20000
    seed: int = 0
    shard: tuple[int, int] = (1, 1)
    #: combinations left out before any host saw them: reason -> count (shard 1 reports them)
    filtered: Counter[str] = field(default_factory=Counter, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"selection mode must be one of {', '.join(MODES)}")
        k, n = self.shard
        if not 1 <= k <= n:
            raise ValueError(f"shard {k}/{n}: K must be between 1 and N")
        if self.mode == "sample" and self.size < 1:
            raise ValueError("the sample size must be at least 1")

    def describe(self) -> str:
        what = f"sample of {self.size:,}" if self.mode == "sample" else "full matrix"
        shard = f", shard {self.shard[0]}/{self.shard[1]}" if self.shard[1] > 1 else ""
        return f"{what} (seed {self.seed}){shard}"

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "sample": self.size if self.mode == "sample" else None,
            "seed": self.seed,
            "shard": {"index": self.shard[0], "count": self.shard[1]},
        }

    def rows(self, part: tuple[int, int] = (0, 1)) -> Iterator[Row]:
        """This shard's combinations, or its ``part`` (j, J): every J-th from the j-th (0-based),
        as a job of ``--jobs`` takes them. Grouped by CPU state, in a fixed order."""
        k, n = self.shard
        j, jobs = part
        # position i of the whole selection is the shard's (i // n)-th when i % n == k - 1,
        # and that one is the job's when (i // n) % jobs == j
        start, step = k - 1 + n * j, n * jobs
        if self.mode == "sample":
            yield from sample_rows(self.size, self.seed)[start::step]
            return
        yield from core_rows(self.filtered if (k, j) == (1, 0) else None, start, step)
        core = core_count()
        extra = extra_rows(self.seed)
        first = (start - core) % step
        yield from extra[first::step]

    def count(self, part: tuple[int, int] = (0, 1)) -> int:
        """How many rows `rows` yields (before host filtering)."""
        k, n = self.shard
        j, jobs = part
        total = self.size if self.mode == "sample" else core_count() + len(extra_rows(self.seed))
        return len(range(k - 1 + n * j, total, n * jobs))


def by_cpu(rows: list[Row]) -> list[Row]:
    """``rows`` grouped by CPU state (stable), so a run sets each state once."""
    return sorted(rows, key=lambda r: r[: dims.CPU_END])


def sample_rows(size: int, seed: int) -> list[Row]:
    """The covering array (cut to ``size`` if larger), then seeded random rows; grouped by CPU
    state. Duplicates and rows that mean nothing (two reserved bits) are drawn again: a sample
    is a list of meaningful combinations, so it filters nothing itself."""
    rows = list(covering_array(seed)[:size])
    seen = set(rows)
    rng = random.Random(f"kvmpage-matrix-sample-{seed}")
    while len(rows) < size:
        row = dims.normalize(_draw(rng))
        problem = dims.structural_problem(row)
        if problem is not None:
            continue
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return by_cpu(rows)


def _samplers() -> list[tuple[int, float]]:
    """Per column: how its value is drawn. (n, 0.0): uniform among n values; (n, p): value 0
    (the walk-stopping choice for P, the default for PS and reserved bits) with ..."""
    out = []
    for d in dims.DIMENSIONS:
        field_name = d.name.rsplit(".", 1)[-1]
        if d.group == "entry" and field_name == "p":
            out.append((-1, 1 / 8))  # P=0 with probability 1/8
        elif d.group == "entry" and field_name == "rsvd":
            out.append((len(d.values), 3 / 4))  # no reserved bit with probability 3/4
        elif d.name == "pdpte.ps":
            out.append((-1, 7 / 8))  # PS=0 with probability 7/8
        else:
            out.append((len(d.values), 0.0))
    return out


_SAMPLERS = _samplers()
_LARGE = ((dims.COL["pdpte", "ps"], dims.COL["pdpte", "d"], dims.COL["pdpte", "rsvd"]),
          (dims.COL["pde", "ps"], dims.COL["pde", "d"], dims.COL["pde", "rsvd"]))  # fmt: skip


#: How often a drawn walk ends at each level (the lower levels have more dimensions).
_STOPS = (("pml4e", 0.10), ("pdpte", 0.15), ("pde", 0.30), ("pte", 0.45))


def _pick_stop(r: float) -> str:
    """The level drawn by ``r`` (uniform in [0, 1)) under `_STOPS`."""
    for level, share in _STOPS:
        if r < share:
            return level
        r -= share
    return "pte"


def _draw(rng: random.Random) -> Row:
    """One row: the level where the walk ends is drawn first (so every level is reached
    often), then each dimension on its own; the levels above go on (present, no reserved bit,
    no PS), the chosen one ends the walk (not present, a reserved bit or a leaf)."""
    rand = rng.random
    out = []
    for n, p in _SAMPLERS:
        r = rand()
        if n < 0:  # a binary choice: 0 with probability p
            out.append(0 if r < p else 1)
        elif p == 0.0:
            out.append(int(r * n))
        else:  # 0 with probability p, else uniform among the others
            out.append(0 if r < p else 1 + int((r - p) / (1 - p) * (n - 1)))
    for ps, d, rsvd in _LARGE:
        if out[ps] == 0:
            out[d] = 0
            if out[rsvd] >= 3:
                out[rsvd] = 1 + out[rsvd] % 2
    stop = _pick_stop(rand())
    for level in dims.LEVELS[: dims.LEVELS.index(stop)]:
        out[dims.COL[level, "p"]] = 1
        out[dims.COL[level, "rsvd"]] = 0
        if not out[dims.C_NXE]:
            out[dims.COL[level, "nx"]] = 0
        if level != "pml4e":
            out[dims.COL[level, "ps"]] = 0
            out[dims.COL[level, "d"]] = 0
    if stop != "pte" and dims.stop_level(tuple(out)) != stop:
        ways = ["p", "rsvd"] + (["ps"] if stop != "pml4e" else [])
        way = ways[int(rand() * len(ways))]
        if way == "p":
            out[dims.COL[stop, "p"]] = 0
        elif way == "ps":
            out[dims.COL[stop, "ps"]] = 1
        else:
            choices = 4 if stop == "pml4e" else 3  # none, b51, maxphy (, ps)
            out[dims.COL[stop, "rsvd"]] = 1 + int(rand() * (choices - 1))
    return tuple(out)


def extra_rows(seed: int) -> tuple[Row, ...]:
    """The rows the full matrix adds to the core product: the covering array, without the rows
    the core product already has, grouped by CPU state."""
    return tuple(by_cpu([r for r in covering_array(seed) if not _in_core(r)]))


def _in_core(row: Row) -> bool:
    core = set(range(dims.ENTRY_START)) | {dims.COL["pdpte", "w"]}
    core |= {dims.COL["pde", f] for f in _CORE_PDE} | {dims.COL["pte", f] for f in _CORE_PTE}
    return all(row[c] == dims.DEFAULT_ROW[c] for c in range(len(row)) if c not in core)


def _variants(level: str, fields: tuple[str, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Every assignment of ``fields`` of ``level``: tuples of (column, value)."""
    cols = [dims.COL[level, f] for f in fields]
    ranges = [range(len(dims.DIMENSIONS[c].values)) for c in cols]
    return [tuple(zip(cols, vs, strict=True)) for vs in itertools.product(*ranges)]


def _core_entries(nxe: int, filtered: Counter[str] | None, weight: int) -> Iterator[Row]:
    """The meaningful (PDE, PTE) parts of the core product with EFER.NXE = ``nxe``, as rows with
    every other dimension at its default; counts what it leaves out (times ``weight``)."""
    base = list(dims.DEFAULT_ROW)
    base[dims.C_NXE] = nxe
    pte_variants = _variants("pte", _CORE_PTE)
    for pde in _variants("pde", _CORE_PDE):
        row = base.copy()
        for c, v in pde:
            row[c] = v
        head = tuple(row)
        problem = dims.structural_problem(head)
        if problem is not None and "reserved" not in problem:
            if filtered is not None:
                filtered[problem] += weight * len(pte_variants)
            continue
        if dims.stop_level(head) == "pde":
            if filtered is not None:
                filtered[_NOT_WALKED] += weight * (len(pte_variants) - 1)
                if problem is not None:
                    filtered[problem] += weight
            if problem is None:
                yield head
            continue
        for pte in pte_variants:
            for c, v in pte:
                row[c] = v
            full = tuple(row)
            problem = dims.structural_problem(full)
            if problem is None:
                yield full
            elif filtered is not None:
                filtered[problem] += weight


def core_rows(filtered: Counter[str] | None = None, start: int = 0, step: int = 1) -> Iterator[Row]:
    """The core product, CPU state by CPU state: its rows at positions ``start``,
    ``start + step``, ... (only those are built)."""
    cpus = list(itertools.product(*(range(2) for _ in range(dims.CPU_END))))
    accesses = list(itertools.product(range(2), range(3), range(2)))  # cpl, access, twice
    w_col = dims.COL["pdpte", "w"]
    entries = {nxe: list(_core_entries(nxe, None, 1)) for nxe in (0, 1)}
    if filtered is not None:
        weight = len(cpus) // 2 * len(accesses) * 2
        for nxe in (0, 1):
            for _ in _core_entries(nxe, filtered, weight):
                pass
    at = 0  # position of the block's first row
    for cpu in cpus:
        block = entries[cpu[dims.C_NXE]]
        for acc in accesses:
            for w in (0, 1):
                for e in block[(start - at) % step :: step]:
                    row = list(e)
                    row[: dims.CPU_END] = cpu
                    row[dims.C_CPL], row[dims.C_ACCESS], row[dims.C_TWICE] = acc
                    row[w_col] = w
                    yield tuple(row)
                at += len(block)


@functools.cache
def core_count() -> int:
    """How many rows `core_rows` yields."""
    per_nxe = {nxe: sum(1 for _ in _core_entries(nxe, None, 1)) for nxe in (0, 1)}
    others = (1 << (dims.CPU_END - 1)) * 12 * 2
    return others * (per_nxe[0] + per_nxe[1])
