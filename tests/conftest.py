"""Test configuration: the `kvm` marker.

Tests marked ``@pytest.mark.kvm`` need a usable /dev/kvm. Without one they skip with the reason,
except when ``KVMPAGE_REQUIRE_KVM=1`` (set by ``.ci/run``): then a missing or unusable /dev/kvm
is a test failure, so a CI machine can never pass by silently skipping the hardware tests.
"""

from __future__ import annotations

import os

import pytest

KVM_DEVICE = os.environ.get("KVMPAGE_KVM_DEVICE", "/dev/kvm")


def _kvm_problem() -> str | None:
    """Why /dev/kvm cannot be used here, or None when it can be opened read-write."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{KVM_DEVICE} is not usable: {e.strerror} (errno {e.errno})"
    os.close(fd)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is None:
        return
    problem = _kvm_problem()
    if problem is None:
        return
    if os.environ.get("KVMPAGE_REQUIRE_KVM") == "1":
        pytest.fail(f"KVMPAGE_REQUIRE_KVM=1 but {problem}", pytrace=False)
    pytest.skip(problem)
