"""``kvmpage host``: what this host's KVM is, which oracle answers which access, and which
paging features can be verified here, with the evidence each verdict rests on."""

from __future__ import annotations

import argparse
from typing import Any

from kvmpage.cli.common import EXIT_OK, emit_json

_HOW = (
    "the hypervisor kind comes from the loaded KVM modules' parameters in /sys/module; each "
    "feature was tried in a guest (a probe that must fault or must succeed), not read from CPUID"
)
_ORACLE = {
    "mmu": "the CPU's MMU walks the tables (native execution)",
    "kvm-emulator": "KVM emulates the instruction and walks the tables in software",
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
    print(f"hypervisor: {profile.kind.value}")
    for cpl, oracle in ((3, profile.cpl3_oracle), (0, profile.cpl0_oracle)):
        print(f"CPL{cpl} accesses are checked by: {oracle} ({_ORACLE.get(oracle, oracle)})")
    print("KVM_TRANSLATE (kvm-translate): KVM's own walker, a second opinion on addresses only")
    print(f"MAXPHYADDR {c.maxphyaddr}, linear address bits {c.linear_bits}")
    print("paging features (tried in a guest):")
    for name, r in sorted(profile.features.items()):
        print(f"  {name:<18} {r.support.value:<12} {r.evidence}")
    print(f"how: {_HOW}")
    return EXIT_OK
