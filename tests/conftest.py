"""Test configuration: the ``kvm`` marker and the fixtures come from kvmpage's own pytest plugin
(`kvmpage.pytest_plugin`, registered through the ``pytest11`` entry point), as they do in any
project that installs kvmpage.

Tests marked ``@pytest.mark.kvm`` need a usable /dev/kvm. Without one they skip with the reason,
except when ``KVMPAGE_REQUIRE_KVM=1`` (set by ``.ci/run``): then a missing or unusable /dev/kvm
is a test failure, so a CI machine can never pass by silently skipping the hardware tests.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # a checkout used without installing kvmpage has no entry point: load the plugin here
    if not config.pluginmanager.has_plugin("kvmpage"):
        config.pluginmanager.import_plugin("kvmpage.pytest_plugin")
