"""The architecture's answer to one access: the permission model of x86-64 paging (4 or 5 levels).

`evaluate` is a pure function of the entries of a walk, the CPU state (CR0.WP, CR4.SMEP,
CR4.SMAP, EFER.NXE, RFLAGS.AC), MAXPHYADDR and the host's features, the CPL and the access kind.
It returns what the architecture (Intel SDM vol. 3A ch. 4, AMD APM vol. 2 ch. 5) requires: the
physical address reached, or the fault (#PF with its exact error code and CR2, or #GP for a
non-canonical address), and which accessed / dirty bits the walk must set, may set, or must leave
alone at each level.

Checks, level by level from the top (the entries `kvmpage.paging.walk.walk` read): present,
then reserved bits (`kvmpage.paging.arch.reserved_mask`: address bits at or above MAXPHYADDR, NX
when EFER.NXE is clear, PS in a PML4E or PML5E, PS in a PDPTE without 1 GiB page support, bits
13..20 of a 2 MiB leaf and 13..29 of a 1 GiB leaf); then the rights are combined (writable
and user only if every level says so, executable unless any level sets NX). At the leaf: user
access to a supervisor page; write to a read-only page (a supervisor write is allowed when
CR0.WP is clear); fetch from a non-executable page; SMEP (supervisor fetch from a user page);
SMAP (supervisor data access to a user page with RFLAGS.AC clear). Protection keys are not
modelled (`pk` never appears): kvmpage reports PKU as unavailable where it cannot verify it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from kvmpage.paging.arch import (
    ADDRESS_MASK,
    CpuState,
    Features,
    canonicalize,
    is_canonical,
    leaf_frame,
    reserved_mask,
)

__all__ = [
    "ADDRESS_MASK", "AccessKind", "CpuState", "Fault", "Features", "Outcome", "PF_I", "PF_P",
    "PF_PK", "PF_RSVD", "PF_U", "PF_W", "VECTOR_GP", "VECTOR_PF", "canonicalize", "evaluate",
    "is_canonical", "reserved_mask",
]  # fmt: skip

_P, _W, _U, _A, _D, _PS = 1, 2, 4, 0x20, 0x40, 0x80
_NX = 1 << 63

# #PF error-code bits
PF_P = 1 << 0  #: the fault was a protection violation (0: a not-present entry)
PF_W = 1 << 1  #: the access was a write
PF_U = 1 << 2  #: the access was made at CPL3
PF_RSVD = 1 << 3  #: a reserved bit was set in an entry of the walk
PF_I = 1 << 4  #: the access was an instruction fetch (reported only with NXE or SMEP)
PF_PK = 1 << 5  #: protection-key violation (not modelled)

VECTOR_GP = 13
VECTOR_PF = 14


class AccessKind(enum.Enum):
    """What the probe does at the address."""

    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


@dataclass(frozen=True, slots=True)
class Fault:
    """An exception the access raises: vector, error code, CR2 (page faults only)."""

    vector: int
    error_code: int
    cr2: int | None

    def at(self, va: int) -> Fault:
        """The same fault for an access at ``va`` (CR2 is the address for a #PF)."""
        return Fault(self.vector, self.error_code, va if self.vector == VECTOR_PF else None)

    def describe(self) -> str:
        """``#PF(P|W|U) at 0x...`` style text."""
        if self.vector != VECTOR_PF:
            return f"#GP({self.error_code:#x})" if self.vector == VECTOR_GP else f"#{self.vector}"
        bits = [
            n
            for n, b in (
                ("P", PF_P),
                ("W", PF_W),
                ("U", PF_U),
                ("RSVD", PF_RSVD),
                ("I", PF_I),
                ("PK", PF_PK),
            )
            if self.error_code & b
        ]
        cr2 = f" at {self.cr2:#x}" if self.cr2 is not None else ""
        return f"#PF({'|'.join(bits) or '0'}){cr2}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The architecture's answer for one access.

    ``phys`` is the physical address reached (None on a fault). ``levels`` are the levels whose
    entries the walk read, PML4 first. A/D expectations are sets of levels: ``a_must`` /
    ``d_must`` must be set afterwards, ``a_may`` may or may not be (a CPU may set A on upper
    levels of a walk that then faults); every other A/D bit of the walk must be left as it was.
    """

    phys: int | None
    fault: Fault | None
    leaf_level: int | None
    page_size: int | None
    levels: tuple[int, ...]
    a_must: frozenset[int]
    a_may: frozenset[int]
    d_must: frozenset[int]
    reason: str  #: a short human explanation (which rule decided)

    @property
    def ok(self) -> bool:
        """Whether the access completes."""
        return self.fault is None


def evaluate(
    entries: Sequence[int],
    va: int,
    *,
    access: AccessKind,
    cpl: int,
    cpu: CpuState = CpuState(),  # noqa: B008 (frozen)
    features: Features = Features(),  # noqa: B008 (frozen)
) -> Outcome:
    """The outcome the architecture requires for ``access`` at ``va`` through ``entries``.

    ``entries`` is the walk's raw entries, top level first, as `kvmpage.paging.walk.walk`
    reads them (`Walk.entries`); 4 or 5 of them at most (CR4.LA57 in ``cpu``).
    """
    if cpl not in (0, 3):
        raise ValueError(f"cpl must be 0 or 3, got {cpl}")
    depth = cpu.levels
    if not is_canonical(va, depth):
        return Outcome(
            None,
            Fault(VECTOR_GP, 0, None),
            None,
            None,
            (),
            frozenset(),
            frozenset(),
            frozenset(),
            "non-canonical address: #GP, no walk",
        )
    user = cpl == 3
    access_bits = (PF_W if access is AccessKind.WRITE else 0) | (PF_U if user else 0)
    if access is AccessKind.FETCH and (cpu.nxe or cpu.smep):
        access_bits |= PF_I
    writable = usr = executable = True
    levels: list[int] = []
    for i, raw in enumerate(entries):
        level = depth - i
        levels.append(level)
        passed = frozenset(levels[:-1])
        if not raw & _P:
            return _fault(va, access_bits, levels, passed, f"level-{level} entry not present")
        bad = raw & reserved_mask(level, raw, cpu, features)
        if bad:
            return _fault(
                va,
                access_bits | PF_P | PF_RSVD,
                levels,
                passed,
                f"level-{level} entry has reserved bits {bad:#x} set",
            )
        writable &= bool(raw & _W)
        usr &= bool(raw & _U)
        executable &= not (raw & _NX and cpu.nxe)
        if level == 1 or raw & _PS:
            return _leaf(
                va, raw, level, levels, access, user, access_bits, writable, usr, executable, cpu
            )
    raise ValueError("the walk's entries end before a leaf or a non-present entry")


def _fault(
    va: int, error_code: int, levels: list[int], may: frozenset[int], reason: str
) -> Outcome:
    return Outcome(
        None,
        Fault(VECTOR_PF, error_code, va),
        None,
        None,
        tuple(levels),
        frozenset(),
        may,
        frozenset(),
        reason,
    )


def _leaf(
    va: int,
    raw: int,
    level: int,
    levels: list[int],
    access: AccessKind,
    user: bool,
    access_bits: int,
    writable: bool,
    usr: bool,
    executable: bool,
    cpu: CpuState,
) -> Outcome:
    reason = _protection(access, user, writable, usr, executable, cpu)
    if reason is not None:
        # A may already be set on every level above the leaf; the leaf's A/D stay as they were.
        return _fault(va, access_bits | PF_P, levels, frozenset(levels[:-1]), reason)
    span = 1 << (12 + 9 * (level - 1))
    phys = leaf_frame(raw, level) | (va & (span - 1))
    d = frozenset({level}) if access is AccessKind.WRITE else frozenset()
    return Outcome(
        phys,
        None,
        level,
        span,
        tuple(levels),
        frozenset(levels),
        frozenset(),
        d,
        "allowed",
    )


def _protection(
    access: AccessKind, user: bool, writable: bool, usr: bool, executable: bool, cpu: CpuState
) -> str | None:
    """Why the access violates the combined rights, or None when it is allowed."""
    if user and not usr:
        return "user access to a supervisor page"
    if access is AccessKind.WRITE and not writable and (user or cpu.wp):
        return "write to a read-only page" + ("" if user else " with CR0.WP set")
    if access is AccessKind.FETCH:
        if not executable:
            return "instruction fetch from a no-execute page"
        if not user and usr and cpu.smep:
            return "supervisor fetch from a user page with SMEP"
    elif not user and usr and cpu.smap and not cpu.ac:
        return "supervisor data access to a user page with SMAP and RFLAGS.AC clear"
    return None
