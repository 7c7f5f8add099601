"""Host profile: which KVM this is, the CPUID the guest really gets, which paging features work.

The static part (`hypervisor_kind`, `cpuid_summary`) is cheap and read from sysfs and from the
CPUID table KVM stores after KVM_SET_CPUID2 (read back, because a module may rewrite what was
asked). Paging features are *established by trying them in a guest* (see
`kvmpage.machine.features`); this module only defines the record and the oracle rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum

from kvmpage.kvm import abi


class HypervisorKind(StrEnum):
    """How guest memory accesses are checked on this host."""

    PVM = "pvm"  # kvm_pvm: CPL3 on shadow paging, CPL0 emulated
    VMX_EPT = "vmx-ept"
    VMX_SHADOW = "vmx-shadow"  # VMX without EPT: shadow paging, CPL0 runs natively
    SVM_NPT = "svm-npt"
    SVM_SHADOW = "svm-shadow"
    #: not KVM: QEMU's TCG through Unicorn (kvmpage.tcg), every access emulated
    TCG = "tcg"
    UNKNOWN = "unknown"


def _read_param(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _truthy(value: str | None) -> bool:
    return value is not None and value.upper() in ("Y", "1")


def hypervisor_kind(sysfs: str = "/sys/module") -> HypervisorKind:
    """Identify the KVM flavour from the loaded modules and their parameters."""
    if os.path.isdir(os.path.join(sysfs, "kvm_pvm")):
        return HypervisorKind.PVM
    if os.path.isdir(os.path.join(sysfs, "kvm_intel")):
        ept = _read_param(os.path.join(sysfs, "kvm_intel", "parameters", "ept"))
        return HypervisorKind.VMX_EPT if _truthy(ept) else HypervisorKind.VMX_SHADOW
    if os.path.isdir(os.path.join(sysfs, "kvm_amd")):
        npt = _read_param(os.path.join(sysfs, "kvm_amd", "parameters", "npt"))
        return HypervisorKind.SVM_NPT if _truthy(npt) else HypervisorKind.SVM_SHADOW
    return HypervisorKind.UNKNOWN


def cpl0_oracle(kind: HypervisorKind) -> str:
    """The oracle label of a CPL0 access: emulated by KVM on PVM, the MMU elsewhere (``tcg``
    under QEMU's TCG)."""
    if kind is HypervisorKind.TCG:
        return "tcg"
    return "kvm-emulator" if kind in (HypervisorKind.PVM, HypervisorKind.UNKNOWN) else "mmu"


def cpl3_oracle(kind: HypervisorKind) -> str:
    """The oracle label of a CPL3 access: native execution on the MMU under KVM, ``tcg``
    under QEMU's TCG."""
    return "tcg" if kind is HypervisorKind.TCG else "mmu"


def find_leaf(
    entries: list[abi.kvm_cpuid_entry2], function: int, index: int = 0
) -> abi.kvm_cpuid_entry2 | None:
    for e in entries:
        if e.function == function and (
            e.index == index or not e.flags & abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        ):
            return e
    return None


@dataclass(frozen=True, slots=True)
class CpuidSummary:
    """The paging-relevant bits of a CPUID table."""

    nx: bool
    smep: bool
    smap: bool
    pdpe1gb: bool
    pcid: bool
    invpcid: bool
    pku: bool
    la57: bool
    maxphyaddr: int
    linear_bits: int

    @classmethod
    def from_entries(cls, entries: list[abi.kvm_cpuid_entry2]) -> CpuidSummary:
        def bit(function: int, reg: str, n: int, index: int = 0) -> bool:
            leaf = find_leaf(entries, function, index)
            return leaf is not None and bool(getattr(leaf, reg) >> n & 1)

        size = find_leaf(entries, 0x8000_0008)
        return cls(
            nx=bit(0x8000_0001, "edx", 20),
            smep=bit(7, "ebx", 7),
            smap=bit(7, "ebx", 20),
            pdpe1gb=bit(0x8000_0001, "edx", 26),
            pcid=bit(1, "ecx", 17),
            invpcid=bit(7, "ebx", 10),
            pku=bit(7, "ecx", 3),
            la57=bit(7, "ecx", 16),
            maxphyaddr=int(size.eax & 0xFF) if size else 36,
            linear_bits=int(size.eax >> 8 & 0xFF) if size else 48,
        )


class Support(StrEnum):
    """Verdict on one paging feature."""

    WORKS = "works"  # tried in the guest and behaved architecturally
    UNSUPPORTED = "unsupported"  # not granted, rejected, or misbehaves when tried
    NOT_TRIED = "not-tried"


@dataclass(frozen=True, slots=True)
class FeatureResult:
    support: Support
    evidence: str

    @property
    def works(self) -> bool:
        return self.support is Support.WORKS


@dataclass(frozen=True, slots=True)
class HostProfile:
    """Everything kvmpage knows about this host's KVM, for reports and for oracle labels."""

    kind: HypervisorKind
    cpuid: CpuidSummary
    features: dict[str, FeatureResult] = field(default_factory=dict)
    #: PML4 slots where a CPL3 access faults (not present) although the guest's tables map it:
    #: the hypervisor keeps them for itself (PVM: slot 256). Established in a guest.
    cpl3_blocked_slots: frozenset[int] = frozenset()

    @property
    def cpl0_oracle(self) -> str:
        return cpl0_oracle(self.kind)

    @property
    def cpl3_oracle(self) -> str:
        return cpl3_oracle(self.kind)

    @property
    def maxphyaddr(self) -> int:
        return self.cpuid.maxphyaddr

    def supports(self, feature: str) -> bool:
        result = self.features.get(feature)
        return result is not None and result.works

    @property
    def host_writes_visible_after_walk(self) -> bool:
        """Whether a host-side rewrite of an already walked table reaches the guest after a flush.

        False on shadow-paging hosts (PVM, VMX/SVM without TDP): KVM write-protects guest tables
        only against guest writes, so a host rewrite leaves a stale shadow entry.
        """
        return self.kind in (HypervisorKind.VMX_EPT, HypervisorKind.SVM_NPT)

    def describe(self) -> str:
        lines = [
            f"hypervisor: {self.kind.value}",
            f"oracles: cpl3={self.cpl3_oracle} cpl0={self.cpl0_oracle}",
            f"MAXPHYADDR: {self.cpuid.maxphyaddr}, linear address bits: {self.cpuid.linear_bits}",
        ]
        for name, res in sorted(self.features.items()):
            lines.append(f"{name}: {res.support.value} ({res.evidence})")
        return "\n".join(lines)
