"""Comparing what the CPU did with what the model expects, combination by combination.

The fast path compares whole tuples (a probe's status, vector, error code, CR2 and value; an
entry's bits under the A/D rule); only a mismatch is taken apart field by field into
`Disagreement`\\ s. Their ``expected`` / ``actual`` texts are deliberately coarse ("tag of
another frame", "va+0x1000") so that the summary groups alike failures into one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvmpage.machine.protocol import ST_FAULT, ST_OK, VECTOR_NAMES
from kvmpage.matrix import dims
from kvmpage.matrix.arena import Arena
from kvmpage.matrix.expect import FETCH_OFFSET, Expected, combined_ad
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.matrix.report import Disagreement, Totals
from kvmpage.verify.probes import TAG_PREFIX, tag

if TYPE_CHECKING:
    from kvmpage.matrix.engine import Chunk

_LEVEL_NAMES = ("pml4e", "pdpte", "pde", "pte")
WRITE_MARK = 0x5752 << 48  #: what a write probe stores: "WR" and the probe's number
_A, _D = dims.A, dims.D
Want = tuple[int, int, int, int, int]  #: status, vector, error code, CR2, value


def _outcome(vector: int, error: int) -> str:
    if vector == 0:
        return "ok"
    name = VECTOR_NAMES.get(vector, f"vector {vector}")
    return f"{name}({error:#x})"


class Checker:
    """Checks chunks of one run; counts into ``totals``, keeps ``limit`` disagreements."""

    def __init__(
        self, arena: Arena, host: HostFacts, totals: Totals, limit: int, vas: list[int]
    ) -> None:
        self.arena = arena
        self.vas = vas  #: each member's base address, by member index
        self.host = host
        self.totals = totals
        self.limit = limit
        self._masks: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}

    def clear(self) -> None:
        self._masks.clear()

    def masks(self, first: Expected | None, main: Expected) -> tuple[tuple[int, int], ...]:
        """Per level 4..1: the A/D bits the accesses must set and may set."""
        if first is None:
            return main.ad
        key = (first.serial, main.serial)
        hit = self._masks.get(key)
        if hit is None:
            hit = self._masks[key] = combined_ad(first, main)
        return hit

    def chunk(self, chunk: Chunk, cols: Sequence[list[int]]) -> None:
        """Check every member of ``chunk`` against the result columns of its batch (status,
        vector, error code, CR2, value) and the memory as the batch left it."""
        st, vec, err, cr2, val = cols
        q = self.arena.q
        woff = chunk.woff
        vas = self.vas
        oracle3, oracle0 = self.host.oracle(3), self.host.oracle(0)
        cpl3 = primed = 0
        for m, (row, written, first, main, rel, page) in enumerate(chunk.members):
            access = row[dims.C_ACCESS]
            va = vas[m]
            probe = va + (0, woff, FETCH_OFFSET)[access]
            if row[dims.C_CPL]:
                oracle, i1 = oracle3, chunk.base3 + rel
                cpl3 += 1
            else:
                oracle, i1 = oracle0, chunk.base0 + rel
            want = _want(main, access, probe, page)
            got = (st[i1], vec[i1], err[i1], cr2[i1], val[i1])
            if got != want:
                self._probe(chunk, m, "", main, want, got, probe, oracle)
            if first is not None:
                primed += 1
                i0 = i1 - 1
                want0 = _want(first, 0, va, page)
                got0 = (st[i0], vec[i0], err[i0], cr2[i0], val[i0])
                if got0 != want0:
                    self._probe(chunk, m, "first.", first, want0, got0, va, oracle)
            masks = main.ad if first is None else self.masks(first, main)
            for k, (addr, before) in enumerate(written):
                must, may = masks[k]
                may &= ~before
                after = q[addr >> 3]
                if (after & ~may) != ((before | must) & ~may):
                    self._entry(chunk, m, k, before, after, must, may, probe, oracle, main)
            if access == 1 and page:
                at = (page + woff) >> 3
                value = q[at]
                expect = (chunk.write_base + m) | WRITE_MARK if main.vector == 0 else 0
                if value != expect and got[0] == want[0]:
                    self._add(
                        chunk,
                        m,
                        "memory",
                        "the value, at the leaf's frame" if expect else "unchanged",
                        "not written there" if expect else "written",
                        oracle,
                        probe,
                        f"{value:#x} at {page + woff:#x}, expected {expect:#x}",
                        main,
                    )
                q[at] = 0
        totals = self.totals
        n = len(chunk.members)
        totals.oracles[oracle3] += cpl3
        totals.oracles[oracle0] += n - cpl3
        totals.checked += n
        totals.probes += n + primed
        start = dims.ENTRY_START
        for member in chunk.members:
            row = member[0]
            totals.heads.add(row[:start])
            totals.walks.add((row[dims.C_NXE], row[start:]))

    # -- taking a mismatch apart -----------------------------------------------------------

    def _probe(self, chunk: Chunk, m: int, prefix: str, exp: Expected, want: Want, got: Want,
               va: int, oracle: str) -> None:  # fmt: skip
        status, vector, error, cr2, value = got
        g_vec = 0 if status == ST_OK else vector if status == ST_FAULT else -1
        if status not in (ST_OK, ST_FAULT):
            self._add(chunk, m, prefix + "outcome", _outcome(want[1], want[2]),
                      f"status {status}", oracle, va, f"record status {status}", exp)  # fmt: skip
            return
        if g_vec != want[1] or error != want[2]:
            field = "error_code" if g_vec == want[1] else "outcome"
            self._add(chunk, m, prefix + field, _outcome(want[1], want[2]),
                      _outcome(g_vec, error), oracle, va,
                      f"expected {_outcome(want[1], want[2])}, got {_outcome(g_vec, error)}",
                      exp)  # fmt: skip
            return
        if g_vec == 14 and cr2 != want[3]:
            self._add(chunk, m, prefix + "cr2", "va", f"va{cr2 - va:+#x}", oracle, va,
                      f"CR2 {cr2:#x}, the access was at {va:#x}", exp)  # fmt: skip
            return
        if g_vec == 0 and value != want[4]:
            if value == 0xFFFF_FFFF_FFFF_FFFF:
                actual = "all ones (no RAM there)"
            elif value >> 48 == TAG_PREFIX >> 48:
                actual = "tag of another frame"
            else:
                actual = "not a tag"
            self._add(chunk, m, prefix + "frame", "tag of the leaf's frame", actual, oracle, va,
                      f"read {value:#x}, the leaf's frame holds {want[4]:#x}", exp)  # fmt: skip

    def _entry(self, chunk: Chunk, m: int, k: int, before: int, after: int, must: int,
               may: int, va: int, oracle: str, exp: Expected) -> None:  # fmt: skip
        level = _LEVEL_NAMES[k]
        where = f"{level} {before:#x} -> {after:#x}"
        for bit, name in ((_A, "a"), (_D, "d")):
            if before & bit or must & bit:
                want = "set"
            elif may & bit:
                continue  # either is right
            else:
                want = "clear"
            have = "set" if after & bit else "clear"
            if want != have:
                self._add(chunk, m, f"{level}.{name}", want, have, oracle, va, where, exp)
        other = (after ^ before) & ~(_A | _D)
        if other:
            self._add(chunk, m, f"{level}.other-bits", "unchanged", f"changed {other:#x}",
                      oracle, va, where, exp)  # fmt: skip

    def _add(self, chunk: Chunk, m: int, field: str, expected: str, actual: str, oracle: str,
             va: int, detail: str, exp: Expected) -> None:  # fmt: skip
        q = self.arena.q
        names = _LEVEL_NAMES
        row, written = chunk.members[m][:2]
        entries = [(names[k], at, before, q[at >> 3])
                   for k, (at, before) in enumerate(written)]  # fmt: skip
        d = Disagreement(row, field, expected, actual, oracle, va, detail, exp.reason,
                         entries)  # fmt: skip
        self.totals.add(d, self.limit)


def _want(exp: Expected, access: int, va: int, page: int) -> Want:
    """The record a correct CPU leaves for an access the model answered with ``exp``."""
    if exp.vector == 0:
        return (ST_OK, 0, 0, 0, 0 if access == 1 else tag(page))
    return (ST_FAULT, exp.vector, exp.error, va if exp.vector == 14 else 0, 0)
