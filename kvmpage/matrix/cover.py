"""A pairwise covering array over the matrix's dimensions: every value of every dimension, and
every pair of values of any two dimensions, in at least one combination.

"In a combination" counts only where the walk reads the dimension (`dims.effective_columns`): a
PTE bit below a non-present PDE covers nothing. Pairs that no meaningful combination can hold
(``pml4e.p=0`` with ``pte.w=0``, ``pde.d=1`` with ``pde.ps=0``) are not required.

The construction is greedy, as AETG does it: take the first uncovered pair, then fix the other
dimensions one at a time (in a seeded random order) to the value that covers most uncovered
pairs with the dimensions fixed so far, as long as the combination stays meaningful. About 550
combinations cover the seven thousand pairs of the 39 dimensions.

It runs in two phases so that a host which cannot run some values still gets every other pair:
first every pair that *universal* combinations can hold (no PS in the PDPTE, which is a 1 GiB
leaf on some hosts and a reserved bit on others, and no reserved address bit, which does not
exist where MAXPHYADDR is 52), then the rest.
"""

from __future__ import annotations

import functools
import random

from kvmpage.matrix import dims
from kvmpage.matrix.dims import Row

Pair = tuple[int, int, int, int]  #: (column a, value a, column b, value b) with a < b


def universal(row: Row) -> bool:
    """Whether ``row`` means the same test, and can run, on every host."""
    if row[dims.COL["pdpte", "ps"]] == 1:
        return False
    return all(dims.rsvd_name(row, level) not in ("b51", "maxphy") for level in dims.LEVELS)


def construct(fixed: dict[int, int], *, only_universal: bool = False) -> Row | None:
    """The meaningful, normalized row holding ``fixed`` (column -> value) where the walk reads
    every fixed column, or None when there is none. Columns not fixed keep their defaults
    (the defaults walk to a 4 KiB leaf), except PS, set when a fixed value needs a leaf."""
    row = list(dims.DEFAULT_ROW)
    for c, v in fixed.items():
        row[c] = v
    for level in ("pdpte", "pde"):
        ps = dims.COL[level, "ps"]
        wants_leaf = (
            dims.rsvd_name(tuple(row), level) not in ("none", "b51", "maxphy")
            or row[dims.COL[level, "d"]] == 1
        )
        if wants_leaf and row[ps] == 0 and ps not in fixed:
            row[ps] = 1
    norm = dims.normalize(tuple(row))
    if dims.structural_problem(norm) is not None:
        return None
    if only_universal and not universal(norm):
        return None
    effective = set(dims.effective_columns(norm))
    for c, v in fixed.items():
        if norm[c] != v or c not in effective:
            return None
    return norm


def pairs_of(row: Row) -> list[Pair]:
    """The pairs ``row`` covers."""
    cols = dims.effective_columns(row)
    return [(a, row[a], b, row[b]) for i, a in enumerate(cols) for b in cols[i + 1 :]]


@functools.cache
def required_pairs() -> frozenset[Pair]:
    """Every pair of values some meaningful combination can hold."""
    n = len(dims.DIMENSIONS)
    out = set()
    for a in range(n):
        for b in range(a + 1, n):
            for va in range(len(dims.DIMENSIONS[a].values)):
                for vb in range(len(dims.DIMENSIONS[b].values)):
                    if construct({a: va, b: vb}) is not None:
                        out.add((a, va, b, vb))
    return frozenset(out)


@functools.cache
def covering_array(seed: int = 0) -> tuple[Row, ...]:
    """A pairwise covering array of meaningful, normalized rows (deterministic per seed)."""
    rng = random.Random(f"kvmpage-matrix-cover-{seed}")
    rows: list[Row] = []
    universal_pairs = {p for p in required_pairs() if _universal_pair(p)}
    _greedy(rng, universal_pairs, rows, only_universal=True)
    rest = set(required_pairs())
    for row in rows:
        rest.difference_update(pairs_of(row))
    _greedy(rng, rest, rows, only_universal=False)
    return tuple(rows)


def _universal_pair(pair: Pair) -> bool:
    a, va, b, vb = pair
    return construct({a: va, b: vb}, only_universal=True) is not None


def _greedy(
    rng: random.Random, uncovered: set[Pair], rows: list[Row], *, only_universal: bool
) -> None:
    queue = sorted(uncovered)
    n = len(dims.DIMENSIONS)
    at = 0
    while uncovered:
        while queue[at] not in uncovered:
            at += 1
        a, va, b, vb = queue[at]
        fixed = {a: va, b: vb}
        others = [c for c in range(n) if c not in fixed]
        rng.shuffle(others)
        for c in others:
            values = list(range(len(dims.DIMENSIONS[c].values)))
            rng.shuffle(values)
            gains = [
                (sum(1 for d, dv in fixed.items()
                     if ((d, dv, c, v) if d < c else (c, v, d, dv)) in uncovered), v)
                for v in values
            ]  # fmt: skip
            gains.sort(key=lambda gv: -gv[0])  # stable: ties keep the shuffled order
            for _, v in gains:
                if construct({**fixed, c: v}, only_universal=only_universal) is not None:
                    fixed[c] = v
                    break
        row = construct(fixed, only_universal=only_universal)
        assert row is not None
        rows.append(row)
        uncovered.difference_update(pairs_of(row))
