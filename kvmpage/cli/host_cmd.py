"""``kvmpage host``: what this host's KVM is, which oracle answers which access, and which
paging features can be verified here, with the evidence each verdict rests on."""

from __future__ import annotations

import argparse
from typing import Any

from kvmpage.cli.common import EXIT_OK
from kvmpage.cli.output import emit_json

#: The paging features a layout may use; the other entries of a profile describe the host.
PAGING_FEATURES = ("nx", "smep", "smap", "1gib-pages", "pcid", "pku", "la57")
_HOW = (
    "the hypervisor kind comes from the loaded KVM modules' parameters in /sys/module; each "
    "feature was tried in a guest (a probe that must fault or must succeed), not read from CPUID"
)
_ORACLE = {
    "mmu": "the CPU's MMU walks the tables: native execution",
    "kvm-emulator": "KVM emulates the instruction and walks the tables in software",
}
_KIND = {
    "pvm": "kvm_pvm: CPL3 runs natively on shadow page tables, CPL0 is emulated",
    "vmx-ept": "Intel VMX with EPT: both CPLs run natively on the guest's tables",
    "svm-npt": "AMD SVM with NPT: both CPLs run natively on the guest's tables",
    "vmx-shadow": "Intel VMX without EPT: native execution on shadow page tables",
    "svm-shadow": "AMD SVM without NPT: native execution on shadow page tables",
}


def cmd_host(args: argparse.Namespace) -> int:
    """``kvmpage host``."""
    from kvmpage.machine import host_profile

    profile = host_profile(args.device)
    c = profile.cpuid
    if args.json:
        doc: dict[str, Any] = {
            "command": "host",
            "exit_code": EXIT_OK,
            "device": args.device,
            "hypervisor": profile.kind.value,
            "oracles": {"cpl3": profile.cpl3_oracle, "cpl0": profile.cpl0_oracle},
            "maxphyaddr": c.maxphyaddr,
            "linear_bits": c.linear_bits,
            "cpuid": {
                name: getattr(c, name)
                for name in ("nx", "smep", "smap", "pdpe1gb", "pcid", "invpcid", "pku", "la57")
            },
            "features": {
                name: {"support": r.support.value, "works": r.works, "evidence": r.evidence}
                for name, r in sorted(profile.features.items())
            },
            "how": _HOW,
        }
        emit_json(doc)
        return EXIT_OK
    print(f"device: {args.device}")
    kind = profile.kind.value
    print(f"hypervisor: {kind}" + (f" ({_KIND[kind]})" if kind in _KIND else ""))
    for cpl, oracle in ((3, profile.cpl3_oracle), (0, profile.cpl0_oracle)):
        print(f"CPL{cpl} accesses are checked by: {oracle} ({_ORACLE.get(oracle, oracle)})")
    print("KVM_TRANSLATE (kvm-translate): KVM's own walker, a second opinion on addresses only")
    print(f"MAXPHYADDR {c.maxphyaddr}, linear address bits {c.linear_bits}")
    paging = [(n, r) for n, r in sorted(profile.features.items()) if n in PAGING_FEATURES]
    works = [n for n, r in paging if r.works]
    missing = [n for n, r in paging if not r.works]
    print(f"verifiable here: 4K and 2M pages, {', '.join(works) or 'nothing more'}")
    if missing:
        print(f"not verifiable here: {', '.join(missing)}")
    print("features and host behaviour (each tried in a guest):")
    for name, r in sorted(profile.features.items()):
        print(f"  {name:<21} {r.support.value:<12} {r.evidence}")
    print(f"how: {_HOW}")
    return EXIT_OK
