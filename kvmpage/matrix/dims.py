"""The dimensions of the permission matrix, and what one combination of their values means.

A combination is a `Row`: a tuple with one value index per dimension of `DIMENSIONS`, in that
order. Dimensions and their values are *symbolic* and the same on every host (``maxphy`` is "the
first bit above MAXPHYADDR", ``pdpte.ps`` is "PS in the PDPTE" whether the host makes that a
1 GiB leaf or a reserved bit), so a seed selects the same combinations everywhere; what a host
cannot do is filtered when the combination runs (`kvmpage.matrix.hostfacts`).

Two rules make every row mean one walk:

- `normalize`: the walk stops at the first entry that is not present, has a reserved bit set, or
  is a leaf (PS in a PDE or PDPTE, any PTE). Entries below it are never read, so their
  dimensions are put back to their defaults (and the leaf's attribute bits are dropped when the
  walk stops above the leaf). A combination that differs only below the stop is the same test.
- `structural_problem`: combinations that mean nothing are refused, with the reason: bits 13-20
  (13-29) are reserved only in a 2 MiB (1 GiB) leaf and are address bits elsewhere; D is only
  a dimension of a leaf; and, as in kvm-unit-tests, at most one reserved-bit condition at a time
  (NX with EFER.NXE clear counts as one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Row = tuple[int, ...]

#: Bit positions of the entry flags.
P, W, U, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63

#: Attribute bits that the walk must ignore, by value name. ``pat`` is bit 7 in a PTE and bit 12
#: in a 2 MiB or 1 GiB leaf (`leaf_attr_bits`).
_AVAILABLE = {f"avl{b}": 1 << b for b in (9, 10, 11, *range(52, 59))}
LEAF_ATTRS: dict[str, int] = {"none": 0, "g": G, "pwt": PWT, "pcd": PCD, "pat": -1, **_AVAILABLE}
#: Ignored bits of a non-leaf entry (G is left out: bit 8 of a non-leaf entry is ignored on Intel
#: but reserved on AMD, so no vendor-neutral answer exists).
TABLE_ATTRS: dict[str, int] = {"none": 0, "pwt": PWT, "pcd": PCD, "d": D, **_AVAILABLE}

LEVELS = ("pml4e", "pdpte", "pde", "pte")  #: level 4 .. level 1
LEVEL_OF = {"pml4e": 4, "pdpte": 3, "pde": 2, "pte": 1}
_RSVD = {
    "pml4e": ("none", "b51", "maxphy", "ps"),
    "pdpte": ("none", "b51", "maxphy", *(f"b{b}" for b in range(13, 30))),
    "pde": ("none", "b51", "maxphy", *(f"b{b}" for b in range(13, 21))),
    "pte": ("none", "b51", "maxphy"),
}
#: Which dimensions each level's entry has (D only where the entry can be a leaf).
_ENTRY_FIELDS = {
    "pml4e": ("p", "w", "u", "nx", "a", "rsvd"),
    "pdpte": ("p", "w", "u", "nx", "a", "d", "ps", "rsvd"),
    "pde": ("p", "w", "u", "nx", "a", "d", "ps", "rsvd"),
    "pte": ("p", "w", "u", "nx", "a", "d", "rsvd"),
}
_ENTRY_DEFAULTS = {"p": 1, "w": 1, "u": 1, "nx": 0, "a": 0, "d": 0, "ps": 0, "rsvd": 0}


@dataclass(frozen=True, slots=True)
class Dimension:
    """One thing the matrix varies: its name, its values (as shown), the default's index, and
    the group it belongs to (``cpu``, ``access``, ``entry``, ``attr``)."""

    name: str
    values: tuple[str, ...]
    default: int
    group: str

    def index(self, value: str) -> int:
        """The index of ``value`` (``ValueError`` names the choices)."""
        try:
            return self.values.index(value)
        except ValueError:
            raise ValueError(
                f"{self.name}: unknown value {value!r} (one of {', '.join(self.values)})"
            ) from None


def _dims() -> tuple[Dimension, ...]:
    out = [
        Dimension("cr0.wp", ("0", "1"), 1, "cpu"),
        Dimension("efer.nxe", ("0", "1"), 1, "cpu"),
        Dimension("cr4.smep", ("0", "1"), 0, "cpu"),
        Dimension("cr4.smap", ("0", "1"), 0, "cpu"),
        Dimension("rflags.ac", ("0", "1"), 0, "cpu"),
        Dimension("cpl", ("0", "3"), 1, "access"),
        Dimension("access", ("read", "write", "fetch"), 0, "access"),
        Dimension("twice", ("0", "1"), 0, "access"),
    ]
    for level in LEVELS:
        for field in _ENTRY_FIELDS[level]:
            values = _RSVD[level] if field == "rsvd" else ("0", "1")
            out.append(Dimension(f"{level}.{field}", values, _ENTRY_DEFAULTS[field], "entry"))
    out.append(Dimension("leaf.attr", tuple(LEAF_ATTRS), 0, "attr"))
    out.append(Dimension("table.attr", tuple(TABLE_ATTRS), 0, "attr"))
    return tuple(out)


DIMENSIONS: tuple[Dimension, ...] = _dims()
NAMES: tuple[str, ...] = tuple(d.name for d in DIMENSIONS)
INDEX: dict[str, int] = {d.name: i for i, d in enumerate(DIMENSIONS)}
DEFAULT_ROW: Row = tuple(d.default for d in DIMENSIONS)
#: The dimensions that make up the CPU state (a row's ``row[:CPU_END]``).
CPU_END = INDEX["cpl"]
ENTRY_START = INDEX["pml4e.p"]
#: Column of each (level, field).
COL: dict[tuple[str, str], int] = {
    (lv, f): INDEX[f"{lv}.{f}"] for lv in LEVELS for f in _ENTRY_FIELDS[lv]
}
#: The columns of each level's entry dimensions.
LEVEL_COLUMNS: dict[str, tuple[int, ...]] = {
    lv: tuple(COL[lv, f] for f in _ENTRY_FIELDS[lv]) for lv in LEVELS
}
C_WP, C_NXE, C_SMEP, C_SMAP, C_AC = range(5)
C_CPL, C_ACCESS, C_TWICE = INDEX["cpl"], INDEX["access"], INDEX["twice"]
C_LEAF_ATTR, C_TABLE_ATTR = INDEX["leaf.attr"], INDEX["table.attr"]
CPL_VALUES = (0, 3)


def value(row: Row, name: str) -> str:
    """The value of dimension ``name`` in ``row``, as shown."""
    i = INDEX[name]
    return DIMENSIONS[i].values[row[i]]


def make_row(**values: str) -> Row:
    """A row with the defaults, except ``values`` (dimension names with ``.`` written as ``_``).

    ``make_row(cpl="0", access="write", pte_w="0")``: a CPL0 write to a read-only page.
    """
    row = list(DEFAULT_ROW)
    for key, v in values.items():
        i = INDEX[key.replace("_", ".", 1) if key not in INDEX else key]
        row[i] = DIMENSIONS[i].index(v)
    return tuple(row)


def as_dict(row: Row) -> dict[str, str]:
    """Every dimension's value, by name (the JSON form of a combination)."""
    return {d.name: d.values[v] for d, v in zip(DIMENSIONS, row, strict=True)}


def from_dict(values: dict[str, str]) -> Row:
    """The row a dict made by `as_dict` describes (missing dimensions take their default)."""
    row = list(DEFAULT_ROW)
    for name, v in values.items():
        if name not in INDEX:
            raise ValueError(f"unknown dimension {name!r}")
        row[INDEX[name]] = DIMENSIONS[INDEX[name]].index(v)
    return tuple(row)


def rsvd_name(row: Row, level: str) -> str:
    return _RSVD[level][row[COL[level, "rsvd"]]]


def is_leaf(row: Row, level: str) -> bool:
    """Whether the entry at ``level`` ends the walk as a leaf (PTE, or PS set)."""
    return level == "pte" or (level != "pml4e" and row[COL[level, "ps"]] == 1)


def reserved_conditions(row: Row, level: str) -> list[str]:
    """The reserved-bit conditions of ``level``'s entry (host-independent ones): a reserved bit
    value, NX with EFER.NXE clear. (PS in a PDPTE without 1 GiB pages is the host's business.)"""
    out = []
    r = rsvd_name(row, level)
    if r != "none":
        out.append(f"{level}.rsvd={r}")
    if row[COL[level, "nx"]] == 1 and row[C_NXE] == 0:
        out.append(f"{level}.nx with efer.nxe=0")
    return out


#: Per level: the columns of P, the reserved-bit value, NX, and PS (-1: none, it is the PTE or
#: the PML4E, whose PS is a reserved-bit value)
_STOP_COLUMNS = tuple(
    (lv, COL[lv, "p"], COL[lv, "rsvd"], COL[lv, "nx"], COL.get((lv, "ps"), -1)) for lv in LEVELS
)


def stop_level(row: Row) -> str:
    """The entry where the walk of ``row`` ends: not present, a reserved bit, or a leaf."""
    nx_reserved = row[C_NXE] == 0
    for level, p, rsvd, nx, ps in _STOP_COLUMNS:
        if row[p] == 0 or row[rsvd] or (nx_reserved and row[nx]) or (ps >= 0 and row[ps]):
            return level
    return "pte"


def leaf_reached(row: Row) -> bool:
    """Whether the walk stops at a leaf-type entry (the PTE, or an entry with PS set)."""
    return is_leaf(row, stop_level(row))


def normalize(row: Row) -> Row:
    """``row`` with every dimension the walk never reads put back to its default."""
    stop = stop_level(row)
    below = LEVELS[LEVELS.index(stop) + 1 :]
    if not below and leaf_reached(row):
        return row
    out = list(row)
    for level in below:
        for c in LEVEL_COLUMNS[level]:
            out[c] = DEFAULT_ROW[c]
    if not is_leaf(row, stop):
        out[C_LEAF_ATTR] = 0
    return tuple(out)


def structural_problem(row: Row) -> str | None:
    """Why ``row`` (normalized) is not a meaningful combination on any host, or None."""
    for level in ("pdpte", "pde"):
        high = rsvd_name(row, level)
        if high not in ("none", "b51", "maxphy") and row[COL[level, "ps"]] == 0:
            top = 29 if level == "pdpte" else 20
            return f"{level}.rsvd=b13..b{top} without {level}.ps: those are address bits there"
        if row[COL[level, "d"]] == 1 and row[COL[level, "ps"]] == 0:
            return f"{level}.d without {level}.ps: D is a leaf dimension"
    if len(reserved_conditions(row, stop_level(row))) > 1:
        return "more than one reserved bit at a time"
    return None


def effective_columns(row: Row) -> list[int]:
    """The columns whose value matters to ``row``'s walk (normalized rows)."""
    stop = stop_level(row)
    cols = list(range(ENTRY_START))
    for level in LEVELS[: LEVELS.index(stop) + 1]:
        cols += LEVEL_COLUMNS[level]
    if is_leaf(row, stop):
        cols.append(C_LEAF_ATTR)
    cols.append(C_TABLE_ATTR)
    return cols


def leaf_attr_bits(row: Row, leaf_level: str) -> int:
    """The attribute bits ``leaf.attr`` sets in the leaf entry at ``leaf_level``."""
    name = DIMENSIONS[C_LEAF_ATTR].values[row[C_LEAF_ATTR]]
    bits = LEAF_ATTRS[name]
    if bits == -1:  # PAT: bit 7 in a PTE, bit 12 in a large leaf (bit 7 is PS there)
        return PS if leaf_level == "pte" else 1 << 12
    return bits


def table_attr_bits(row: Row) -> int:
    return TABLE_ATTRS[DIMENSIONS[C_TABLE_ATTR].values[row[C_TABLE_ATTR]]]


def describe(row: Row) -> str:
    """A short, complete text form: the non-default values of the walk, then the CPU state.

    ``cpl3 write twice | pde: PS A rsvd=b13 | pte: (not walked) | cr0.wp=1 efer.nxe=1 ...``
    """
    acc = f"cpl{value(row, 'cpl')} {value(row, 'access')}" + (" twice" if row[C_TWICE] else "")
    stop = stop_level(row)
    parts = [acc]
    for level in LEVELS:
        if LEVELS.index(level) > LEVELS.index(stop):
            break
        bits = []
        for f in _ENTRY_FIELDS[level]:
            v = DIMENSIONS[COL[level, f]].values[row[COL[level, f]]]
            if f == "rsvd":
                if v != "none":
                    bits.append(f"rsvd={v}")
            elif v == "1":
                bits.append(f.upper())
        parts.append(f"{level}: {' '.join(bits) or '-'}")
    for name in ("leaf.attr", "table.attr"):
        if row[INDEX[name]]:
            parts.append(f"{name}={value(row, name)}")
    cpu = " ".join(f"{d.name}={d.values[row[i]]}" for i, d in enumerate(DIMENSIONS[:CPU_END]))
    return " | ".join([*parts, cpu])


def check_rows(rows: Sequence[Row]) -> None:
    """Raise ``ValueError`` unless every row has one valid value per dimension."""
    for row in rows:
        if len(row) != len(DIMENSIONS) or any(
            not 0 <= v < len(d.values) for v, d in zip(row, DIMENSIONS, strict=True)
        ):
            raise ValueError(f"not a matrix row: {row!r}")
