"""Every leaf of a scan as a sequence, kept a table at a time (`LeafGroup`).

A layout of 262,144 pages would take hundreds of thousands of `Leaf` tuples to list; `Leaves`
holds its groups instead and makes a `Leaf` only when one is asked for. It also coalesces runs
and answers "which leaf maps this address" a table at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import overload

from kvmpage.layout.dump import Run, coalesce_spans
from kvmpage.layout.scan import Leaf, LeafGroup, scan_groups
from kvmpage.memory import PhysMemory


class Leaves(Sequence[Leaf]):
    """The leaves of `scan_groups`, in ascending virtual order, indexed like ``list(scan(...))``."""

    def __init__(self, groups: Sequence[LeafGroup]) -> None:
        self.groups = list(groups)
        #: index of each group's first leaf
        self.offsets: list[int] = []
        n = 0
        for g in self.groups:
            self.offsets.append(n)
            n += len(g.indices)
        self._n = n
        self._starts = [g.virt(g.indices[0]) for g in self.groups]

    @classmethod
    def scan(
        cls, memory: PhysMemory, p4_phys: int, *, skip_p4: frozenset[int] = frozenset()
    ) -> Leaves:
        """Scan the tables under ``p4_phys`` (see `kvmpage.layout.scan.scan`)."""
        return cls(list(scan_groups(memory, p4_phys, skip_p4=skip_p4)))

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Leaf: ...

    @overload
    def __getitem__(self, index: slice) -> list[Leaf]: ...

    def __getitem__(self, index: int | slice) -> Leaf | list[Leaf]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if not -self._n <= index < self._n:
            raise IndexError(index)
        index %= self._n
        g = bisect.bisect_right(self.offsets, index) - 1
        group = self.groups[g]
        return group.leaf(group.indices[index - self.offsets[g]])

    def __iter__(self) -> Iterator[Leaf]:
        for group in self.groups:
            yield from group.leaves()

    def find(self, va: int) -> Leaf | None:
        """The leaf whose page holds ``va``, if any."""
        g = bisect.bisect_right(self._starts, va) - 1
        if g < 0:
            return None
        group = self.groups[g]
        index = (va - group.base) // group.span
        k = bisect.bisect_left(group.indices, index)
        if k < len(group.indices) and group.indices[k] == index:
            return group.leaf(index)
        return None

    def runs(self) -> list[Run]:
        """``list(coalesce(self))``, a whole table at a time where the table is one run."""
        return list(coalesce_spans(self._spans()))

    def _spans(self) -> Iterator[tuple[Leaf, Leaf, int]]:
        for group in self.groups:
            if group.contiguous():
                idx = group.indices
                yield group.leaf(idx[0]), group.leaf(idx[-1]), len(idx)
            else:
                for leaf in group.leaves():
                    yield leaf, leaf, 1
