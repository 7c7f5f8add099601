"""What a scan of the tables lists (`kvmpage.paging.leaves`): `Leaf`, `LeafGroup`, `Fault`,
`Hole`.

Named tuples, because a scan makes hundreds of thousands of them; `LeafGroup.leaves` turns a
table's worth of entries into `Leaf` records in one comprehension, the bulk path that
enumeration speed depends on (``scripts/bench_walk.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from kvmpage.paging.arch import ADDRESS_MASK, NX, U64_MASK
from kvmpage.paging.walk import RIGHTS, Rights

__all__ = ["Fault", "Hole", "Leaf", "LeafGroup"]

_W, _U = 2, 4
_AD = 0x60  # accessed, dirty: the CPU sets them as it goes
_FLAGS = ~ADDRESS_MASK & U64_MASK


_new = tuple.__new__  # a named tuple without its Python-level __new__
_NX_W_U = NX | _W | _U
#: `Rights` of a leaf by (W|U allowed above it, NX above it) and then its own NX, W and U bits
_RIGHTS_OF = {
    (above, nx_above): {
        bits: RIGHTS[bool(above & bits & _W) | bool(above & bits & _U) << 1
                     | (not (nx_above or bits & NX)) << 2]
        for bits in (0, _W, _U, _W | _U, NX, NX | _W, NX | _U, _NX_W_U)
    }
    for above in (0, _W, _U, _W | _U) for nx_above in (False, True)
}  # fmt: skip


class Leaf(NamedTuple):
    """One mapped page: virtual start, size, the level of its leaf entry, where it goes.

    A named tuple: a large scan makes hundreds of thousands of them.
    """

    virt: int
    size: int
    level: int
    phys: int
    raw: int  #: the leaf entry, exactly as stored
    rights: Rights
    parents: tuple[int, ...]  #: raw entries above the leaf, top level first (shared per table)
    parent_addrs: tuple[int, ...]  #: their physical addresses (shared per table)
    entry_addr: int  #: physical address of the leaf entry

    @property
    def entries(self) -> tuple[int, ...]:
        """Raw entries of the whole walk, top level first."""
        return (*self.parents, self.raw)

    @property
    def entry_addrs(self) -> tuple[int, ...]:
        """Physical addresses of those entries."""
        return (*self.parent_addrs, self.entry_addr)


class Fault(NamedTuple):
    """A present entry the CPU faults on: every address in ``[virt, virt + size)`` walks
    through it and takes a #PF there (``kind`` ``"reserved"``: reserved bits set; ``"absent"``:
    it points at a table the memory does not hold)."""

    virt: int
    size: int
    level: int
    raw: int
    entry_addr: int
    kind: str
    reason: str

    @property
    def virt_end(self) -> int:
        """First virtual address after the range."""
        return self.virt + self.size


class Hole(NamedTuple):
    """``size`` bytes from ``virt`` that consecutive non-present entries of one table at
    ``level`` leave unmapped (for listings that show holes, as Linux's ptdump does)."""

    virt: int
    size: int
    level: int


class LeafGroup(NamedTuple):
    """Consecutive leaves of one table with no child table between them: the unit of bulk work.

    A level-1 table's leaves form one group; a level-2 or level-3 table holding huge pages is
    split into groups by the entries that point to lower tables, so groups come in ascending
    virtual order like the leaves. A named tuple: cheap to make, shared by its leaves.
    """

    table: int  #: physical address of the table
    level: int  #: level of the leaf entries: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB)
    base: int  #: virtual address mapped by the table's entry 0 (canonical)
    words: list[int]  #: the table's 512 raw entries, as read during the scan
    indices: list[int]  #: the group's entries, ascending
    rights: int  #: W|U as allowed by every entry above the table
    nx: bool  #: whether an entry above the table sets NX (with EFER.NXE)
    parents: tuple[int, ...]  #: raw entries above the table, top level first
    parent_addrs: tuple[int, ...]  #: their physical addresses

    @property
    def span(self) -> int:
        """Bytes mapped by one entry."""
        return 1 << (12 + 9 * (self.level - 1))

    def virt(self, index: int) -> int:
        """Virtual address mapped by entry ``index``."""
        return self.base + index * self.span

    def leaf(self, index: int) -> Leaf:
        """The `Leaf` of entry ``index`` (which must be one of the group's)."""
        raw = self.words[index]
        span = self.span
        return _new(Leaf, (
            self.base + index * span, span, self.level, raw & ADDRESS_MASK & -span, raw,
            _RIGHTS_OF[self.rights, self.nx][raw & _NX_W_U], self.parents, self.parent_addrs,
            self.table + 8 * index,
        ))  # fmt: skip

    def leaves(self) -> Iterator[Leaf]:
        """Every leaf of the group, in order: `leaf` of each index, in one comprehension (the
        bulk path of a scan: a third of the time of a call per leaf)."""
        words, base, span, level, table = self.words, self.base, self.span, self.level, self.table
        frame = ADDRESS_MASK & -span
        rights = _RIGHTS_OF[self.rights, self.nx]
        up, up_addrs = self.parents, self.parent_addrs
        return iter([
            _new(Leaf, (base + i * span, span, level, (raw := words[i]) & frame, raw,
                        rights[raw & _NX_W_U], up, up_addrs, table + 8 * i))
            for i in self.indices
        ])  # fmt: skip

    def contiguous(self) -> bool:
        """Whether the group is one coalesced run: consecutive entries, physically contiguous,
        with the same flags but for A and D (a table mapped in one go, then used)."""
        idx = self.indices
        first, n = idx[0], len(idx)
        if idx[-1] - first != n - 1:
            return False
        span = self.span
        w0 = self.words[first]
        wl = w0 + (n - 1) * span
        if (wl ^ w0) & _FLAGS:
            return False  # the addresses would carry into the flag bits
        entries = self.words[first : first + n]
        if entries == list(range(w0, wl + 1, span)):
            return True
        w0 &= ~_AD
        return [w & ~_AD for w in entries] == list(range(w0, w0 + n * span, span))
