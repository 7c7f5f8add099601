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


def scan(
    memory: PhysMemory, p4_phys: int, *, skip_p4: frozenset[int] = frozenset()
) -> Iterator[Leaf]:
    """Every present leaf under the level-4 table at ``p4_phys``, in ascending virtual order.

    ``skip_p4``: level-4 indices not to descend into (a recursive slot, the agent's slot).
    Tables outside ``memory`` are reported by `kvmpage.memory.PhysMemoryError`.
    """
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
) -> Iterator[Leaf]:
    memory.check(table, 4096)
    words = memory._q[table >> 3 : (table >> 3) + 512].tolist()
    span = 1 << (12 + 9 * (level - 1))
    if level == 1:  # the hot case: up to 512 leaves, no recursion
        yield from _scan_leaf_table(words, table, prefix, rights, nx, path, addrs)
        return
    for i, raw in enumerate(words):
        if not raw & _P or (level == 4 and (i in skip_p4 or raw & _PS)):
            continue  # a PS bit at level 4 is reserved: the CPU faults, nothing is mapped
        va = _sign_extend_47(prefix | (i * span))
        r = rights & raw
        x = nx or bool(raw & _NX)
        if raw & _PS and level in (2, 3):
            rights_of = _RIGHTS[bool(r & _W) | bool(r & _U) << 1 | (not x) << 2]
            phys = raw & ADDRESS_MASK & ~(span - 1)
            yield Leaf(va, span, level, phys, raw, rights_of, path, addrs, table + 8 * i)
        else:
            walk = (*path, raw)
            where = (*addrs, table + 8 * i)
            yield from _scan_table(
                memory, raw & ADDRESS_MASK, level - 1, va, r, x, walk, where, skip_p4
            )


def _scan_leaf_table(
    words: list[int],
    table: int,
    prefix: int,
    rights: int,
    nx: bool,
    path: tuple[int, ...],
    addrs: tuple[int, ...],
) -> Iterator[Leaf]:
    for i, raw in enumerate(words):
        if not raw & _P:
            continue
        r = rights & raw
        rights_of = _RIGHTS[bool(r & _W) | bool(r & _U) << 1 | (not (nx or raw >> 63)) << 2]
        yield Leaf(
            prefix | (i << 12), 4096, 1, raw & ADDRESS_MASK, raw, rights_of, path, addrs,
            table + 8 * i,
        )  # fmt: skip


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
            if not raw & _P or raw & _PS or level == 1 or (level == 4 and i in skip_p4):
                continue
            child = raw & ADDRESS_MASK
            frames.append(child)
            todo.append((child, level - 1))
    return frames
