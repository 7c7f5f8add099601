"""The pytest plugin kvmpage installs (entry point ``pytest11``): hardware page-table tests in
any project's suite.

- marker ``kvm``: the test needs a usable ``/dev/kvm`` (``KVMPAGE_KVM_DEVICE`` names another);
  without one it is skipped with the reason, or fails when ``KVMPAGE_REQUIRE_KVM=1`` (CI that
  has KVM must never pass by skipping);
- fixture ``kvmpage_machine``: a fresh `kvmpage.machine.Machine`, closed after the test;
- fixture ``kvmpage_layout``: a function that builds a layout from a TOML path or TOML text
  (``kvmpage_layout("layouts/k.toml")``) into plain memory and returns the
  `kvmpage.layout.spec.BuiltLayout`; everything it built is released after the test.

With them, `kvmpage.testing.assert_hardware_agrees` checks a layout on the real MMU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kvmpage.layout.spec import BuiltLayout
    from kvmpage.machine import Machine

MARKER = "kvm: needs a usable /dev/kvm (fails instead of skipping when KVMPAGE_REQUIRE_KVM=1)"


def _device() -> str:
    return os.environ.get("KVMPAGE_KVM_DEVICE", "/dev/kvm")


def kvm_problem(device: str | None = None) -> str | None:
    """Why ``device`` (default ``/dev/kvm``) cannot be used here, or None when it can."""
    path = device or _device()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{path} is not usable: {e.strerror} (errno {e.errno})"
    os.close(fd)
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is None:
        return
    problem = kvm_problem()
    if problem is None:
        return
    if os.environ.get("KVMPAGE_REQUIRE_KVM") == "1":
        pytest.fail(f"KVMPAGE_REQUIRE_KVM=1 but {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def kvmpage_machine() -> Iterator[Machine]:
    """A fresh kvmpage machine (64 MiB of guest RAM, the agent loaded), closed after the test.
    Mark the test ``@pytest.mark.kvm``."""
    from kvmpage.machine import Machine

    problem = kvm_problem()
    if problem is not None:
        if os.environ.get("KVMPAGE_REQUIRE_KVM") == "1":
            pytest.fail(f"KVMPAGE_REQUIRE_KVM=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    with Machine(device=_device()) as machine:
        yield machine


@pytest.fixture
def kvmpage_layout() -> Iterator[Callable[[Any], BuiltLayout]]:
    """``build(layout)``: a TOML path or TOML text built into plain memory (no KVM needed)."""
    from kvmpage.layout.spec import build
    from kvmpage.testing import layout_spec

    built: list[BuiltLayout] = []

    def make(layout: Any) -> BuiltLayout:
        result = build(layout_spec(layout))
        built.append(result)
        return result

    yield make
    for b in built:
        b.close()
