"""What the tcg oracle can check, established by trying each feature in a TCG guest.

The same record as KVM's (`kvmpage.kvm.host.HostProfile`, kind ``tcg``), so the verifier and
the commands read both alike: CPUID as the emulated CPU answers the ``cpuid`` instruction, and
each paging feature tried with the same probes and the same verdict rules as on KVM
(`kvmpage.machine.features`): NX, SMEP, SMAP (with and without AC), a 1 GiB page, a host rewrite
of a walked entry, every top-level slot at CPL3; PCID and PKU by CPUID and a CR4 bit that
sticks; LA57 by a read through a 5-level table at an address only LA57 makes canonical.
`kvmpage.tcg.machine.tcg_profile` opens the guests and caches the verdicts per process (about
30 ms); this module never builds a `TcgMachine` itself, so the two do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmpage.kvm.host import CpuidSummary, FeatureResult, HostProfile, HypervisorKind
from kvmpage.machine import pte
from kvmpage.machine.features import (
    TAG,
    blocked_slots,
    describe,
    try_core_features,
    verdict,
)
from kvmpage.machine.protocol import Batch

if TYPE_CHECKING:
    from kvmpage.tcg.machine import TcgMachine
from kvmpage.x86 import CR4_PCIDE, CR4_PKE

#: Opens a fresh TCG guest: (memory bytes, batch capacity, 5-level paging).
OpenGuest = Callable[[int, int, bool], "TcgMachine"]

_LA57_VA = 0x0001_0000_0000_0000  # canonical only with 57-bit addresses: level-5 slot 1


def _cpuid(m: TcgMachine) -> CpuidSummary:
    def leaf(function: int, index: int = 0) -> dict[str, int]:
        return m.call(m.stub.cpuid_insn, rax=function, rcx=index)

    basic, ext, ext7, size = leaf(1), leaf(0x8000_0001), leaf(7), leaf(0x8000_0008)
    return CpuidSummary(
        nx=bool(ext["rdx"] >> 20 & 1),
        smep=bool(ext7["rbx"] >> 7 & 1),
        smap=bool(ext7["rbx"] >> 20 & 1),
        pdpe1gb=bool(ext["rdx"] >> 26 & 1),
        pcid=bool(basic["rcx"] >> 17 & 1),
        invpcid=bool(ext7["rbx"] >> 10 & 1),
        pku=bool(ext7["rcx"] >> 3 & 1),
        la57=bool(ext7["rcx"] >> 16 & 1),
        maxphyaddr=size["rax"] & 0xFF,
        linear_bits=size["rax"] >> 8 & 0xFF,
    )


def probe_tcg(open_guest: OpenGuest) -> HostProfile:
    """The tcg oracle's profile: every feature tried in fresh guests from ``open_guest``."""
    with open_guest(8 << 20, 64, False) as m:
        cpuid = _cpuid(m)
        features = try_core_features(m, cpuid.nx)
        for name, bit, granted in (("pcid", CR4_PCIDE, cpuid.pcid), ("pku", CR4_PKE, cpuid.pku)):
            features[name] = _cr4_bit(m, name, bit, granted)
    features["la57"] = _la57(open_guest, cpuid.la57)
    with open_guest(24 << 20, 1024, False) as m:
        failing = blocked_slots(m, range(512))
    features["cpl3-every-pml4-slot"] = verdict(
        not failing,
        "CPL3 reads in every PML4 slot: "
        + (f"not-present #PF in slot(s) {sorted(failing)}" if failing else "every slot worked"),
    )
    return HostProfile(HypervisorKind.TCG, cpuid, features, frozenset(failing))


def _cr4_bit(m: TcgMachine, name: str, bit: int, granted: bool) -> FeatureResult:
    """CPUID must grant it and a ``mov`` to CR4 must keep the bit (then the CPU is reset)."""
    if not granted:
        return verdict(False, f"CPUID does not grant {name.upper()}")
    try:
        cr4 = m.call(m.stub.cr4_or, rdx=bit)["rax"]
    finally:
        m.reset_cpu()
    return verdict(bool(cr4 & bit), f"granted by CPUID; CR4 after setting bit {bit:#x}: {cr4:#x}")


def _la57(open_guest: OpenGuest, granted: bool) -> FeatureResult:
    """A read through a 5-level table at an address that only 57-bit paging makes canonical."""
    if not granted:
        return verdict(False, "CPUID does not grant LA57")
    with open_guest(8 << 20, 64, True) as m:
        mem = m.memory
        frames = pte.FrameBump(mem, pte.SIZE_4K, m.reserved[0])
        space = pte.SimpleSpace(mem, frames)  # its PML4 goes under the level-5 root
        root, page = frames.alloc(), frames.alloc()
        mem.write_u64(page, TAG | page)
        space.map(_LA57_VA & ((1 << 48) - 1), page, pte.P | pte.W | pte.U)
        mem.write_u64(root + 8 * (_LA57_VA >> 48 & 511), space.p4 | pte.P | pte.W | pte.U)
        m.install_agent_slot(root)
        b = Batch()
        b.load_cr3(root)
        i = b.read(_LA57_VA)
        r = m.run(b)[i]
    ok = r.ok and r.value == TAG | page
    where = f"CPL3 read of {_LA57_VA:#x} through a level-5 table"
    return verdict(ok, f"CR4.LA57 on at boot; {where}: {describe(r)}")


__all__ = ["OpenGuest", "probe_tcg"]
