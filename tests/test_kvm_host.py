"""The host profile: hypervisor kind from sysfs, CPUID read back, features tried in a guest,
oracle labels derived from the kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmpage.kvm.host import (
    HostProfile,
    HypervisorKind,
    Support,
    cpl0_oracle,
    hypervisor_kind,
)
from kvmpage.machine import Machine, host_profile


def _fake_sysfs(root: Path, module: str, params: dict[str, str]) -> str:
    (root / module / "parameters").mkdir(parents=True)
    for name, value in params.items():
        (root / module / "parameters" / name).write_text(value + "\n")
    return str(root)


@pytest.mark.parametrize(
    ("module", "params", "kind"),
    [
        ("kvm_pvm", {}, HypervisorKind.PVM),
        ("kvm_intel", {"ept": "Y"}, HypervisorKind.VMX_EPT),
        ("kvm_intel", {"ept": "N"}, HypervisorKind.VMX_SHADOW),
        ("kvm_amd", {"npt": "1"}, HypervisorKind.SVM_NPT),
        ("kvm_amd", {"npt": "0"}, HypervisorKind.SVM_SHADOW),
    ],
)
def test_hypervisor_kind_from_sysfs(
    tmp_path: Path, module: str, params: dict[str, str], kind: HypervisorKind
) -> None:
    assert hypervisor_kind(_fake_sysfs(tmp_path, module, params)) is kind


def test_oracle_labels_follow_the_kind(tmp_path: Path) -> None:
    assert hypervisor_kind(str(tmp_path)) is HypervisorKind.UNKNOWN
    assert cpl0_oracle(HypervisorKind.PVM) == "kvm-emulator"
    assert cpl0_oracle(HypervisorKind.VMX_EPT) == "mmu"
    assert cpl0_oracle(HypervisorKind.SVM_NPT) == "mmu"


@pytest.mark.kvm
def test_profile_of_this_host() -> None:
    profile = host_profile()
    assert isinstance(profile, HostProfile)
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert profile.kind is HypervisorKind.PVM
        assert profile.cpl0_oracle == "kvm-emulator" and profile.cpl3_oracle == "mmu"
        assert not profile.supports("1gib-pages")
        assert not profile.host_writes_visible_after_walk
    assert 36 <= profile.maxphyaddr <= 52
    for name in ("nx", "smep", "smap", "1gib-pages", "pcid", "la57", "pku", "host-rewrite-seen"):
        assert profile.features[name].support in (Support.WORKS, Support.UNSUPPORTED)
        assert profile.features[name].evidence
    # a feature reported as working was seen working, never just read from CPUID
    if profile.cpuid.nx:
        assert profile.supports("nx"), profile.features["nx"].evidence
    assert "hypervisor:" in profile.describe()


@pytest.mark.kvm
def test_profile_is_cached_and_cpuid_read_back() -> None:
    first = host_profile()
    assert host_profile() is first  # the same object: nothing was probed again
    with Machine(8 << 20) as m:
        granted = m.granted_cpuid()
        assert granted == first.cpuid
        assert m.host_profile() is first
        assert m.cpl0_oracle == first.cpl0_oracle
