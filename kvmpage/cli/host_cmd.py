"""``kvmpage host``: what this host's KVM is, which oracle answers which access, and which
paging features can be verified here, with the evidence each verdict rests on."""

from __future__ import annotations

import argparse
from typing import Any

from kvmpage.cli.errors import EXIT_OK
from kvmpage.cli.output import emit_json

#: The paging features a layout may use; the other entries of a profile describe the host.
PAGING_FEATURES = ("nx", "smep", "smap", "1gib-pages", "pcid", "pku", "la57")
_HOW = (
    "the hypervisor kind comes from the loaded KVM modules' parameters in /sys/module; each "
    "feature was tried in a guest (a probe that must fault or must succeed), not read from CPUID"
)
_HOW_TCG = (
    "QEMU's TCG through Unicorn, in this process; CPUID is what the emulated CPU answers and "
    "each feature was tried in a TCG guest, with the same probes as on KVM"
)
_ORACLE = {
    "tcg": "QEMU's TCG emulates the instruction and walks the tables in software",
    "mmu": "the CPU's MMU walks the tables: native execution",
    "kvm-emulator": "KVM emulates the instruction and walks the tables in software",
}
_KIND = {
    "pvm": "kvm_pvm: CPL3 runs natively on shadow page tables, CPL0 is emulated",
    "vmx-ept": "Intel VMX with EPT: both CPLs run natively on the guest's tables",
    "svm-npt": "AMD SVM with NPT: both CPLs run natively on the guest's tables",
    "vmx-shadow": "Intel VMX without EPT: native execution on shadow page tables",
    "svm-shadow": "AMD SVM without NPT: native execution on shadow page tables",
    "tcg": "not KVM: QEMU's TCG through Unicorn (--oracle tcg), every access emulated",
}


#: what the capability table lists besides the paging features, and how each oracle does
_TLB = "tlb"  # a missing invlpg / CR3 reload can show
_TRANSLATE = "translate"  # a second walker answers for addresses (KVM_TRANSLATE)
_CHECKS = (*PAGING_FEATURES, "cpl3-every-pml4-slot", _TLB, _TRANSLATE)
_CHECK_TEXT = {
    _TLB: "a missing TLB flush can show",
    _TRANSLATE: "a second walker on addresses",
    "cpl3-every-pml4-slot": "CPL3 probes in every top-level slot",
}


def capabilities(device: str) -> dict[str, dict[str, Any]]:
    """Per oracle: whether it can run here (else why not) and what it can check."""
    from kvmpage.cli.errors import CliError
    from kvmpage.cli.oracles import profile_of, tcg_problem

    out: dict[str, dict[str, Any]] = {}
    for oracle in ("kvm", "tcg"):
        problem = tcg_problem() if oracle == "tcg" else None
        try:
            profile = None if problem else profile_of(oracle, device)
        except CliError as e:
            problem = str(e)
            profile = None
        if profile is None:
            out[oracle] = {"available": False, "reason": problem, "checks": {}}
            continue
        features = (*PAGING_FEATURES, "cpl3-every-pml4-slot")
        checks = {name: profile.supports(name) for name in features}
        checks[_TLB] = checks[_TRANSLATE] = oracle == "kvm"
        entry: dict[str, Any] = {
            "available": True,
            "reason": None,
            "oracles": {"cpl3": profile.cpl3_oracle, "cpl0": profile.cpl0_oracle},
            "maxphyaddr": profile.maxphyaddr,
            "checks": checks,
        }
        if oracle == "tcg":
            from kvmpage.tcg.engine import CPU_MODEL, unicorn_version

            entry["engine"] = f"unicorn {unicorn_version()} (QEMU 5.0 TCG), CPU model {CPU_MODEL}"
        out[oracle] = entry
    return out


def capability_lines(caps: dict[str, dict[str, Any]]) -> list[str]:
    """The per-oracle table: one row per check, one column per oracle."""
    names = list(caps)
    lines = [
        "what each oracle can check (yes / no; - = the oracle cannot run here; pcid and pku "
        "are features tried in a guest, not yet modelled by kvmpage's software walk):"
    ]
    lines.append(f"  {'':<38}" + "".join(f"{n:>6}" for n in names))
    for check in _CHECKS:
        cells = []
        for n in names:
            if not caps[n]["available"]:
                cells.append("-")
            else:
                cells.append("yes" if caps[n]["checks"].get(check) else "no")
        text = _CHECK_TEXT.get(check, check)
        lines.append(f"  {text:<38}" + "".join(f"{c:>6}" for c in cells))
    for n in names:
        if caps[n]["available"]:
            extra = f"; {caps[n]['engine']}" if "engine" in caps[n] else ""
            labels = caps[n]["oracles"]
            lines.append(
                f"  {n}: CPL3 by {labels['cpl3']}, CPL0 by {labels['cpl0']}, "
                f"MAXPHYADDR {caps[n]['maxphyaddr']}{extra}"
            )
        else:
            lines.append(f"  {n}: cannot run here: {caps[n]['reason']}")
    return lines


def cmd_host(args: argparse.Namespace) -> int:
    """``kvmpage host``."""
    from kvmpage.cli.oracles import profile_of

    oracle = getattr(args, "oracle", "kvm")
    profile = profile_of(oracle, args.device)
    caps = capabilities(args.device)
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
            "how": _HOW if oracle == "kvm" else _HOW_TCG,
            "capabilities": caps,
        }
        emit_json(doc)
        return EXIT_OK
    print(f"device: {args.device}" if oracle == "kvm" else "oracle: tcg (no device needed)")
    kind = profile.kind.value
    print(f"hypervisor: {kind}" + (f" ({_KIND[kind]})" if kind in _KIND else ""))
    for cpl, label in ((3, profile.cpl3_oracle), (0, profile.cpl0_oracle)):
        print(f"CPL{cpl} accesses are checked by: {label} ({_ORACLE.get(label, label)})")
    if oracle == "kvm":
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
    print(f"how: {_HOW if oracle == 'kvm' else _HOW_TCG}")
    print("\n".join(capability_lines(caps)))
    return EXIT_OK
