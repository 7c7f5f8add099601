"""Comparing what the CPU did with what the architecture says, probe by probe and bit by bit."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmpage.machine.protocol import Result
from kvmpage.paging.access import AccessKind, Outcome
from kvmpage.verify.predict import Expectation
from kvmpage.verify.probes import Probe

_A, _D = 0x20, 0x40
OPEN_BUS = (1 << 64) - 1  #: what a read of unbacked guest-physical memory returns


@dataclass(frozen=True, slots=True)
class Verdict:
    """Agreement on one probe; ``why`` explains a disagreement in one line."""

    agree: bool
    why: str = ""


def describe_outcome(outcome: Outcome, value: int | None) -> str:
    """The software's expectation in words."""
    if outcome.fault is not None:
        return f"{outcome.fault.describe()} ({outcome.reason})"
    got = f", value {value:#x}" if value is not None else ""
    return f"ok: physical {outcome.phys:#x}{got}"


def describe_result(result: Result) -> str:
    """What the CPU did, in words."""
    if result.fault is not None:
        f = result.fault
        cr2 = f" at {f.cr2:#x}" if f.vector == 14 else ""
        return f"{f.name}(error {f.error_code:#x}){cr2}"
    if result.ok:
        return f"ok: value {result.value:#x}"
    return "not run" if not result.ran else "bad opcode"


def compare(probe: Probe, expected: Outcome, value: int | None, result: Result) -> Verdict:
    """Whether ``result`` is what ``expected`` (and the expected ``value``) says."""
    fault = expected.fault
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
    actual = result.fault
    if actual is None:
        return Verdict(False, f"the access completed ({describe_result(result)}), software "
                              f"says {fault.describe()}")  # fmt: skip
    if actual.vector != fault.vector:
        return Verdict(False, f"vector {actual.name}, software says {fault.describe()}")
    if actual.error_code != fault.error_code:
        return Verdict(
            False, f"error code {actual.error_code:#x}, software says {fault.error_code:#x}"
        )
    if fault.vector == 14 and actual.cr2 != fault.cr2:
        return Verdict(False, f"CR2 {actual.cr2:#x}, software says {fault.cr2:#x}")
    return Verdict(True)


@dataclass
class EntryExpectation:
    """What the probes of a run require of one entry's A and D bits."""

    before: int
    must_a: bool = False
    may_a: bool = False
    must_d: bool = False
    leaf: bool = False
    probes: list[str] = field(default_factory=list)


def expect_ad(
    expectations: list[tuple[Probe, Expectation]], read: dict[int, int]
) -> dict[int, EntryExpectation]:
    """Aggregate the A/D requirements of all probes per entry address (``read``: values before)."""
    out: dict[int, EntryExpectation] = {}
    for probe, exp in expectations:
        o = exp.outcome
        for i, addr in enumerate(exp.entry_addrs[: len(o.levels)]):
            level = 4 - i
            e = out.get(addr)
            if e is None:
                e = out[addr] = EntryExpectation(read[addr])
            if level in o.a_must:
                e.must_a = True
            if level in o.a_may:
                e.may_a = True
            if level in o.d_must:
                e.must_d = True
            if o.leaf_level == level:
                e.leaf = True
            if len(e.probes) < 3:
                e.probes.append(probe.describe())
    return out


def check_ad(addr: int, e: EntryExpectation, after: int) -> str | None:
    """Why the entry at ``addr`` (``after`` the run) breaks its A/D expectation, or None."""
    changed = e.before ^ after
    if changed & ~(_A | _D):
        return f"entry changed beyond A/D: {e.before:#x} -> {after:#x}"
    if e.must_a and not after & _A:
        return "A not set although a walk used this entry"
    if not e.must_a and not e.may_a and changed & _A:
        return "A set although no walk used this entry"
    if e.must_d and not after & _D:
        return "D not set although a write went through this leaf"
    if not e.must_d and changed & _D:
        return "D set although no write went through this entry"
    return None
