"""The paging-feature probes every oracle's profile is built from, and their verdict rules.

A profile says what an oracle can check, and how that was established: each feature is tried in
a guest, not trusted from CPUID. The probes here work on any `ProbeMachine` (KVM's `Machine`,
`kvmpage.tcg.TcgMachine`), so both oracles try NX, SMEP, SMAP (with and without AC), a 1 GiB
page, a host rewrite of a walked entry and every top-level slot the same way and judge them by
the same rules. What differs per oracle (how a CR4 bit is tried, which slots a hypervisor keeps
for itself, the cache) lives with that oracle: `kvmpage.machine.profile`,
`kvmpage.tcg.profile`.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvmpage.addr import canonicalize
from kvmpage.kvm.host import FeatureResult, Support
from kvmpage.machine import pte
from kvmpage.machine.interface import ProbeMachine
from kvmpage.machine.protocol import Batch, BatchResults, Result, fetch_stub

__all__ = [
    "STUB_OFF",
    "TAG",
    "USER_VA",
    "blocked_slots",
    "describe",
    "try_core_features",
    "verdict",
]

TAG = 0x7A67_FEA7_0000_0000
USER_VA = 0x0000_0040_0000_0000  # slot 0 .. keep probes away from the agent
_NX_VA = USER_VA + 0x2000
_REWRITE_VA = USER_VA + 0x3000
_HUGE_VA = 0x0000_0080_0000_0000  # a 1 GiB-aligned address in slot 1
STUB_OFF = 0x800


def verdict(ok: bool, evidence: str) -> FeatureResult:
    """``works`` or ``unsupported``, with what the guest saw."""
    return FeatureResult(Support.WORKS if ok else Support.UNSUPPORTED, evidence)


def describe(r: Result) -> str:
    """A probe's outcome in a few words: the fault, or the value it read."""
    return str(r.fault) if r.fault is not None else f"value {r.value:#x}"


def try_core_features(m: ProbeMachine, nx_granted: bool) -> dict[str, FeatureResult]:
    """Try NX, SMEP, SMAP, a 1 GiB page and a host rewrite of a walked entry in ``m`` (a fresh
    machine: its memory below ``reserved`` is free). ``nx_granted``: CPUID grants NX (the NX
    bit is only set where it is legal). The CPU state is left as the batch found it."""
    mem = m.memory
    frames = pte.FrameBump(mem, pte.SIZE_4K, m.reserved[0])
    space = pte.SimpleSpace(mem, frames)
    user, nx_page, old, new = (frames.alloc() for _ in range(4))
    for f in (user, nx_page, old, new):
        mem.write_u64(f, TAG | f)
    mem.write(user + STUB_OFF, fetch_stub(TAG | user))
    mem.write(nx_page + STUB_OFF, fetch_stub(TAG | nx_page))
    rw_user = pte.P | pte.W | pte.U | pte.A | pte.D
    space.map(USER_VA, user, rw_user)
    space.map(_NX_VA, nx_page, rw_user | (pte.NX if nx_granted else 0))
    rewrite_pte = space.map(_REWRITE_VA, old, rw_user)
    mem.write_u64(0, TAG)  # what a 1 GiB page at physical 0 would read
    space.map(_HUGE_VA, 0, rw_user, level=3)
    m.install_agent_slot(space.p4)

    b = Batch()
    b.load_cr3(space.p4)
    i_nx_ctl = b.fetch(USER_VA + STUB_OFF)
    i_nx = b.fetch(_NX_VA + STUB_OFF)
    i_smep_on = b.set_smep(True)
    i_smep = b.fetch(USER_VA + STUB_OFF, cpl=0)
    b.set_smep(False)
    i_smap_on = b.set_smap(True)
    i_smap = b.read(USER_VA, cpl=0)
    b.set_ac(True)
    i_smap_ac = b.read(USER_VA, cpl=0)
    b.set_ac(False)
    b.set_smap(False)
    i_huge = b.read(_HUGE_VA)
    i_first = b.read(_REWRITE_VA)
    res = m.run(b)
    features = {
        "nx": _nx(nx_granted, res, i_nx_ctl, i_nx),
        "smep": _smep(res, i_smep_on, i_smep),
        "smap": _smap(res, i_smap_on, i_smap, i_smap_ac),
        "1gib-pages": _huge(res, i_huge),
    }
    # the live-update rule: rewrite an already walked leaf from the host, flush, re-read
    mem.write_u64(rewrite_pte, new | rw_user)
    b = Batch()
    b.invlpg(_REWRITE_VA)
    i_again = b.read(_REWRITE_VA)
    again = m.run(b)[i_again]
    first_ok = res[i_first].ok and res[i_first].value == TAG | old
    seen = again.ok and again.value == TAG | new
    stale = again.ok and again.value == TAG | old
    features["host-rewrite-seen"] = verdict(
        first_ok and seen,
        "host rewrite of a walked PTE + invlpg: guest read the "
        + ("new frame" if seen else "old frame (stale shadow entry)" if stale else str(again))
        + ("" if first_ok else f"; the first read: {describe(res[i_first])}"),
    )
    return features


def blocked_slots(m: ProbeMachine, candidates: Iterable[int]) -> set[int]:
    """The ``candidates`` top-level slots where a mapped user page still faults not-present at
    CPL3. Each slot maps the same tagged user page (A and D clear, as a fresh layout has them);
    ``m`` must be fresh (a walked table rewritten from the host may not be seen)."""
    mem = m.memory
    frames = pte.FrameBump(mem, pte.SIZE_4K, m.reserved[0])
    space = pte.SimpleSpace(mem, frames)
    page = frames.alloc()
    mem.write_u64(page, TAG)
    slots = [s for s in candidates if s != m.agent_slot]
    vas = {s: canonicalize(s << 39) for s in slots}
    for va in vas.values():
        space.map(va, page, pte.P | pte.W | pte.U)
    m.install_agent_slot(space.p4)
    b = Batch()
    b.load_cr3(space.p4)
    index = {s: b.read(va) for s, va in vas.items()}
    res = m.run(b)
    return {
        s
        for s, i in index.items()
        if (f := res[i].fault) is not None and f.vector == 14 and not f.error_code & 1
    }


def _nx(granted: bool, res: BatchResults, i_ctl: int, i_nx: int) -> FeatureResult:
    if not granted:
        return verdict(False, "CPUID does not grant NX")
    ctl, nx = res[i_ctl], res[i_nx]
    ok = ctl.ok and nx.fault is not None and nx.fault.vector == 14 and nx.fault.error_code == 0x15
    return verdict(ok, f"CPL3 fetch from an NX page: {describe(nx)}; control: {describe(ctl)}")


def _smep(res: BatchResults, i_on: int, i_probe: int) -> FeatureResult:
    on, probe = res[i_on], res[i_probe]
    if not on.ok:
        return verdict(False, f"setting CR4.SMEP: {describe(on)}")
    f = probe.fault
    ok = f is not None and f.vector == 14 and f.error_code == 0x11
    return verdict(ok, f"CPL0 fetch from a user page with SMEP: {describe(probe)}")


def _smap(res: BatchResults, i_on: int, i_probe: int, i_ac: int) -> FeatureResult:
    on, probe, ac = res[i_on], res[i_probe], res[i_ac]
    if not on.ok:
        return verdict(False, f"setting CR4.SMAP: {describe(on)}")
    f = probe.fault
    ok = f is not None and f.vector == 14 and f.error_code == 0x1 and ac.ok
    return verdict(
        ok, f"CPL0 read of a user page with SMAP: {describe(probe)}; with AC: {describe(ac)}"
    )


def _huge(res: BatchResults, i_huge: int) -> FeatureResult:
    r = res[i_huge]
    ok = r.ok and r.value == TAG
    return verdict(ok, f"CPL3 read through a 1 GiB page: {describe(r)}")
