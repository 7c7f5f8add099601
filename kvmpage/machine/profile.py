"""KVM's host profile: each paging feature tried in a guest, not trusted from CPUID.

`probe_kvm` boots two small guests (about 10 ms) through the opener it is given and records,
for each feature, whether it worked and the evidence (the fault or value the guest saw): the
probes every oracle shares (`kvmpage.machine.features`), then what only KVM has (CR4 bits
accepted by KVM_SET_SREGS, the top-level slot a PVM hypervisor keeps). It never builds a
`Machine` itself: `kvmpage.machine.machine.host_profile` hands it one and caches the verdicts,
like KVM_GET_SUPPORTED_CPUID, so this module and the machine do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from kvmpage.kvm import abi
from kvmpage.kvm.errors import KvmError
from kvmpage.kvm.handles import Vcpu
from kvmpage.kvm.host import CpuidSummary, FeatureResult, HostProfile, HypervisorKind, Support
from kvmpage.kvm.host import hypervisor_kind as _hypervisor_kind
from kvmpage.machine.features import (
    blocked_slots,
    try_core_features,
    verdict,
)
from kvmpage.machine.interface import ProbeMachine
from kvmpage.x86 import CR4_LA57, CR4_PCIDE, CR4_PKE

__all__ = ["PVM_RESERVED_SLOT", "KvmGuest", "OpenGuest", "probe_kvm"]

#: the PML4 slot a PVM host keeps for itself (CPL3 accesses there are not reliable)
PVM_RESERVED_SLOT = 256


class KvmGuest(ProbeMachine, Protocol):
    """What the KVM probes need of a machine beyond `ProbeMachine`: its vCPU (to try a CR4
    bit with KVM_SET_SREGS), the CPUID it was granted, and a CPU reset."""

    @property
    def vcpu(self) -> Vcpu: ...

    def granted_cpuid(self) -> CpuidSummary: ...

    def reset_cpu(self) -> None: ...


#: Opens a fresh guest with ``memory_size`` bytes of RAM and room for ``capacity`` commands.
OpenGuest = Callable[[int, int], AbstractContextManager[KvmGuest]]


def probe_kvm(open_guest: OpenGuest) -> HostProfile:
    """The profile of the KVM behind ``open_guest``: every feature tried in fresh guests."""
    with open_guest(8 << 20, 64) as m:
        cpuid = m.granted_cpuid()
        features = try_core_features(m, cpuid.nx)
        for name, bit, granted in (
            ("pcid", CR4_PCIDE, cpuid.pcid),
            ("la57", CR4_LA57, cpuid.la57),
            ("pku", CR4_PKE, cpuid.pku),
        ):
            features[name] = _cr4_feature(m, name, bit, granted)
        m.reset_cpu()
    # A fresh guest (the tables above were walked; reusing their frames would be invisible)
    # tries a user page in every PML4 slot at CPL3.
    with open_guest(24 << 20, 1024) as m:
        failing = blocked_slots(m, range(512))
    blocked = set(failing)
    evidence = (
        f"not-present #PF in slot(s) {', '.join(map(str, sorted(failing)))} although the tables "
        "map them"
        if failing
        else "every slot worked in this probe"
    )
    kind = _hypervisor_kind()
    if kind is HypervisorKind.PVM:
        # PVM keeps the first slot of the kernel half (256) for itself: measured here, a CPL3
        # access there faults not-present in some runs and not in others (it depends on host
        # state the guest cannot see), so it is never trusted.
        blocked.add(PVM_RESERVED_SLOT)
        evidence += f"; slot {PVM_RESERVED_SLOT} is kept by the PVM hypervisor and unreliable"
    features["cpl3-every-pml4-slot"] = verdict(
        not blocked, "CPL3 reads in every PML4 slot: " + evidence
    )
    return HostProfile(kind, cpuid, features, frozenset(blocked))


def _cr4_feature(m: KvmGuest, name: str, bit: int, granted: bool) -> FeatureResult:
    """CPUID must grant it and KVM_SET_SREGS must accept the CR4 bit (then it is switched off)."""
    if not granted:
        return verdict(False, f"CPUID does not grant {name.upper()}")
    sregs = abi.kvm_sregs.from_buffer_copy(m.vcpu.get_sregs())
    sregs.cr4 |= bit
    try:
        m.vcpu.set_sregs(sregs)
    except KvmError as e:
        return verdict(False, f"KVM_SET_SREGS rejected CR4 bit {bit:#x}: {e.strerror}")
    finally:
        m.reset_cpu()
    return FeatureResult(Support.WORKS, f"granted by CPUID and CR4 bit {bit:#x} accepted")
