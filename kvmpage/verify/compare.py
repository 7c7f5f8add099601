"""Comparing what the CPU did with what the architecture says, probe by probe and bit by bit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvmpage.machine.protocol import ST_FAULT, ST_OK, Result
from kvmpage.paging.access import AccessKind, Outcome
from kvmpage.verify.predict import Expectation
from kvmpage.verify.probes import Probe

A, D = 0x20, 0x40

# positions in a raw record tuple (`kvmpage.machine.protocol.BatchResults.raw`)
REC_VALUE, REC_CR2, REC_ERROR, REC_STATUS, REC_VECTOR = 5, 6, 7, 8, 9


@dataclass(frozen=True, slots=True)
class Verdict:
    """Agreement on one probe; ``why`` explains a disagreement in one line."""

    agree: bool
    why: str = ""


def describe_expectation(exp: Expectation, value: int | None, va: int) -> str:
    """The software's expectation in words."""
    o = exp.outcome
    if o.fault is not None:
        return f"{o.fault.at(va).describe()} ({o.reason})"
    got = f", value {value:#x}" if value is not None else ""
    return f"ok: physical {exp.phys:#x}{got}"


def describe_result(result: Result) -> str:
    """What the CPU did, in words."""
    if result.fault is not None:
        f = result.fault
        cr2 = f" at {f.cr2:#x}" if f.vector == 14 else ""
        return f"{f.name}(error {f.error_code:#x}){cr2}"
    if result.ok:
        return f"ok: value {result.value:#x}"
    return "not run" if not result.ran else "bad opcode"


def agrees(probe: Probe, outcome: Outcome, value: int | None, rec: Sequence[int]) -> bool:
    """The fast test on a raw record: does the CPU's result match the expectation?"""
    return agrees_raw(probe.va, probe.access is AccessKind.WRITE, outcome, value, rec)


def agrees_raw(
    va: int, write: bool, outcome: Outcome, value: int | None, rec: Sequence[int]
) -> bool:
    """`agrees` for an access at ``va`` (a write when ``write``) without a `Probe`."""
    fault = outcome.fault
    if fault is None:
        return rec[REC_STATUS] == ST_OK and (value is None or write or rec[REC_VALUE] == value)
    return (
        rec[REC_STATUS] == ST_FAULT
        and rec[REC_VECTOR] == fault.vector
        and rec[REC_ERROR] == fault.error_code
        and (fault.vector != 14 or rec[REC_CR2] == va)
    )


def compare(probe: Probe, exp: Expectation, value: int | None, result: Result) -> Verdict:
    """Whether ``result`` is what ``exp`` (and the expected ``value``) says, and if not why."""
    fault = exp.outcome.fault
    if fault is None:
        if result.fault is not None:
            return Verdict(False, f"the CPU faulted ({describe_result(result)}), software says ok")
        if not result.ok:
            return Verdict(False, f"the probe did not complete ({describe_result(result)})")
        if value is not None and probe.access is not AccessKind.WRITE and result.value != value:
            return Verdict(
                False,
                f"the CPU reached a different frame: value {result.value:#x}, expected {value:#x}",
            )
        return Verdict(True)
    want = fault.at(probe.va)
    actual = result.fault
    if actual is None:
        return Verdict(
            False, f"the access completed ({describe_result(result)}), software says "
            f"{want.describe()}"
        )  # fmt: skip
    if actual.vector != want.vector:
        return Verdict(False, f"vector {actual.name}, software says {want.describe()}")
    if actual.error_code != want.error_code:
        return Verdict(
            False, f"error code {actual.error_code:#x}, software says {want.error_code:#x}"
        )
    if want.vector == 14 and actual.cr2 != want.cr2:
        return Verdict(False, f"CR2 {actual.cr2:#x}, software says {want.cr2:#x}")
    return Verdict(True)


@dataclass
class AccessedDirty:
    """What the probes of a run require of the A and D bits, as sets of entry addresses.

    ``depth`` is the level of the first entry of every walk (4, or 5 under CR4.LA57): a walk's
    entry of level ``n`` is its entry number ``depth - n``."""

    must_a: set[int]
    may_a: set[int]
    must_d: set[int]
    _last_parents: tuple[int, ...] | None = None
    depth: int = 4

    @classmethod
    def of(cls, pairs: Sequence[tuple[Probe, Expectation]], depth: int = 4) -> AccessedDirty:
        must_a: set[int] = set()
        may_a: set[int] = set()
        must_d: set[int] = set()
        ad = cls(must_a, may_a, must_d, depth=depth)
        for _, exp in pairs:
            if exp.last_addr is not None:
                ad.add_walk(exp.outcome, exp.parent_addrs, exp.last_addr)
            elif exp.outcome.a_may or exp.outcome.a_must:
                ad.add_walk(exp.outcome, exp.parent_addrs[:-1], exp.parent_addrs[-1])
        return ad

    def add_walk(self, o: Outcome, parent_addrs: tuple[int, ...], last_addr: int) -> None:
        """Add what one walk (its entries' addresses, the last one apart) requires."""
        if o.a_must and len(o.a_must) == len(parent_addrs) + 1:  # the whole walk
            if parent_addrs is not self._last_parents:  # shared per table: add once
                self.must_a.update(parent_addrs)
                self._last_parents = parent_addrs
            self.must_a.add(last_addr)
        elif o.a_must:
            addrs = (*parent_addrs, last_addr)
            self.must_a.update(addrs[self.depth - level] for level in o.a_must)
        if o.a_may:
            addrs = (*parent_addrs, last_addr)
            self.may_a.update(addrs[self.depth - level] for level in o.a_may)
        if o.d_must:
            addrs = (*parent_addrs, last_addr)
            self.must_d.update(addrs[self.depth - level] for level in o.d_must)

    def add_parents(self, o: Outcome, parent_addrs: tuple[int, ...]) -> None:
        """Add what a walk requires of the entries above its last one (at ``parent_addrs``,
        the top level first)."""
        top, depth = len(parent_addrs), self.depth
        rules = ((o.a_must, self.must_a), (o.a_may, self.may_a), (o.d_must, self.must_d))
        for levels, into in rules:
            into.update(parent_addrs[depth - level] for level in levels if depth - level < top)

    def entries(self) -> set[int]:
        """Every entry some expectation speaks about."""
        return self.must_a | self.may_a | self.must_d

    def check(self, addr: int, before: int, after: int) -> str | None:
        """Why the entry at ``addr`` (``before`` and ``after`` the run) breaks the rules."""
        changed = before ^ after
        if changed & ~(A | D):
            return f"entry changed beyond A/D: {before:#x} -> {after:#x}"
        if addr in self.must_a and not after & A:
            return "A not set although a walk used this entry"
        if changed & A and addr not in self.must_a and addr not in self.may_a:
            return "A set although no walk used this entry"
        if addr in self.must_d and not after & D:
            return "D not set although a write went through this leaf"
        if changed & D and addr not in self.must_d:
            return "D set although no write went through this entry"
        return None

    def describe(self, addr: int, before: int) -> str:
        a = "must" if addr in self.must_a else "may" if addr in self.may_a else "must not"
        d = "must" if addr in self.must_d else "must not"
        return f"before {before:#x}: A {a} be set, D {d} be set"
