"""Every mapping a set of tables holds, as the CPU sees it: a scan of the whole hierarchy.

`scan` walks the tables under a level-4 table in memory with hardware semantics (an entry counts
only when PRESENT; PS at levels 3 and 2 ends the walk in a huge page) and yields one `Leaf` per
mapped page with its effective rights: writable only if every level allows it, user only if
every level does, executable unless any level sets NX.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from kvmpage.addr import _sign_extend_47
from kvmpage.memory import PhysMemory

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
_P, _W, _U, _PS = 1, 2, 4, 0x80
_AD = 0x60  # accessed, dirty: the CPU sets them as it goes
_NX = 1 << 63


@dataclass(frozen=True, slots=True)
class Rights:
    """Effective access rights of a mapping, combined over every level of its walk."""

    writable: bool
    user: bool
    executable: bool

    def __str__(self) -> str:
        return (
            ("U" if self.user else "K")
            + " r"
            + ("w" if self.writable else "-")
            + ("x" if self.executable else "-")
        )


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
    parents: tuple[int, ...]  #: raw entries above the leaf, level 4 first (shared per table)
    parent_addrs: tuple[int, ...]  #: their physical addresses (shared per table)
    entry_addr: int  #: physical address of the leaf entry

    @property
    def entries(self) -> tuple[int, ...]:
        """Raw entries of the whole walk, level 4 first."""
        return (*self.parents, self.raw)

    @property
    def entry_addrs(self) -> tuple[int, ...]:
        """Physical addresses of those entries."""
        return (*self.parent_addrs, self.entry_addr)


#: the eight possible `Rights`, indexed by writable | user << 1 | executable << 2
_RIGHTS = tuple(Rights(bool(i & 1), bool(i & 2), bool(i & 4)) for i in range(8))


class LeafGroup(NamedTuple):
    """Consecutive leaves of one table with no child table between them: the unit of bulk work.

    A level-1 table's present entries form one group; a level-2 or level-3 table holding huge
    pages is split into groups by the entries that point to lower tables, so groups come in
    ascending virtual order like the leaves. A named tuple: cheap to make, shared by its leaves.
    """

    table: int  #: physical address of the table
    level: int  #: level of the leaf entries: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB)
    base: int  #: virtual address mapped by the table's entry 0 (sign-extended)
    words: list[int]  #: the table's 512 raw entries, as read during the scan
    indices: list[int]  #: the group's entries, ascending
    rights: int  #: W|U as allowed by every entry above the table
    nx: bool  #: whether an entry above the table sets NX
    parents: tuple[int, ...]  #: raw entries above the table, level 4 first
    parent_addrs: tuple[int, ...]  #: their physical addresses

    @property
    def span(self) -> int:
        """Bytes mapped by one entry."""
        return 1 << (12 + 9 * (self.level - 1))

    def virt(self, index: int) -> int:
        """Virtual address mapped by entry ``index``."""
        return self.base + index * self.span

    def leaf(self, index: int) -> Leaf:
        """The `Leaf` of entry ``index`` (which must be present)."""
        raw = self.words[index]
        span = self.span
        r = self.rights & raw
        rights_of = _RIGHTS[bool(r & _W) | bool(r & _U) << 1 | (not (self.nx or raw >> 63)) << 2]
        return Leaf(
            self.base + index * span, span, self.level, raw & ADDRESS_MASK & ~(span - 1), raw,
            rights_of, self.parents, self.parent_addrs, self.table + 8 * index,
        )  # fmt: skip

    def leaves(self) -> Iterator[Leaf]:
        """Every leaf of the group, in order."""
        return map(self.leaf, self.indices)

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
        if (wl ^ w0) & ~ADDRESS_MASK & ((1 << 64) - 1):
            return False  # the addresses would carry into the flag bits
        entries = self.words[first : first + n]
        if entries == list(range(w0, wl + 1, span)):
            return True
        w0 &= ~_AD
        return [w & ~_AD for w in entries] == list(range(w0, w0 + n * span, span))


def scan(
    memory: PhysMemory, p4_phys: int, *, skip_p4: frozenset[int] = frozenset()
) -> Iterator[Leaf]:
    """Every present leaf under the level-4 table at ``p4_phys``, in ascending virtual order.

    ``skip_p4``: level-4 indices not to descend into (a recursive slot, the agent's slot).
    Tables outside ``memory`` are reported by `kvmpage.memory.PhysMemoryError`.
    """
    for group in scan_groups(memory, p4_phys, skip_p4=skip_p4):
        yield from group.leaves()


def scan_groups(
    memory: PhysMemory, p4_phys: int, *, skip_p4: frozenset[int] = frozenset()
) -> Iterator[LeafGroup]:
    """`scan` by `LeafGroup`: the same leaves, a table's worth at a time, without making a
    `Leaf` per page (large layouts)."""
    yield from _scan_table(memory, p4_phys, 4, 0, _W | _U, False, (), (), skip_p4)


def _scan_table(
    memory: PhysMemory,
    table: int,
    level: int,
    prefix: int,
    rights: int,
    nx: bool,
    path: tuple[int, ...],
    addrs: tuple[int, ...],
    skip_p4: frozenset[int],
) -> Iterator[LeafGroup]:
    memory.check(table, 4096)
    words = memory._q[table >> 3 : (table >> 3) + 512].tolist()
    if level == 1:  # the hot case: up to 512 leaves, no recursion
        present = [i for i, raw in enumerate(words) if raw & _P]
        if present:
            yield LeafGroup(table, 1, prefix, words, present, rights, nx, path, addrs)
        return
    span = 1 << (12 + 9 * (level - 1))
    huge: list[int] = []
    for i, raw in enumerate(words):
        if not raw & _P or (level == 4 and (i in skip_p4 or raw & _PS)):
            continue  # a PS bit at level 4 is reserved: the CPU faults, nothing is mapped
        if raw & _PS:  # levels 3 and 2: a huge page
            huge.append(i)
            continue
        if huge:
            yield LeafGroup(table, level, prefix, words, huge, rights, nx, path, addrs)
            huge = []
        va = _sign_extend_47(prefix | (i * span))
        yield from _scan_table(
            memory, raw & ADDRESS_MASK, level - 1, va, rights & raw, nx or bool(raw & _NX),
            (*path, raw), (*addrs, table + 8 * i), skip_p4,
        )  # fmt: skip
    if huge:
        yield LeafGroup(table, level, prefix, words, huge, rights, nx, path, addrs)


def table_frames(
    memory: PhysMemory, p4_phys: int, *, skip_p4: frozenset[int] = frozenset()
) -> list[int]:
    """Physical addresses of every table reachable from the level-4 table, itself included."""
    frames = [p4_phys]
    todo = [(p4_phys, 4)]
    while todo:
        table, level = todo.pop()
        memory.check(table, 4096)
        for i, raw in enumerate(memory._q[table >> 3 : (table >> 3) + 512].tolist()):
            if not raw & _P or raw & _PS or (level == 4 and i in skip_p4):
                continue
            child = raw & ADDRESS_MASK
            frames.append(child)
            if level > 2:  # a level-1 table points to pages only
                todo.append((child, level - 1))
            else:
                memory.check(child, 4096)
    return frames
