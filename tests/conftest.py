"""Test configuration: the ``kvm`` marker and the fixtures come from kvmpage's own pytest plugin
(`kvmpage.pytest_plugin`, registered through the ``pytest11`` entry point), as they do in any
project that installs kvmpage.

Tests marked ``@pytest.mark.kvm`` need a usable /dev/kvm. Without one they skip with the reason,
except when ``KVMPAGE_REQUIRE_KVM=1`` (set by ``.ci/run``): then a missing or unusable /dev/kvm
is a test failure, so a CI machine can never pass by silently skipping the hardware tests.

Tests marked ``@pytest.mark.slow`` (the long fuzz campaign) are deselected unless the ``-m``
expression names ``slow`` or the command line names the test: ``pytest -m slow`` (``make
fuzz``) runs them. No other test may take more than a few seconds; the suite bounds its work
by counts and sizes, never by time.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # a checkout used without installing kvmpage has no entry point: load the plugin here
    if not config.pluginmanager.has_plugin("kvmpage"):
        config.pluginmanager.import_plugin("kvmpage.pytest_plugin")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``slow`` tests unless ``-m`` names them (then ``-m`` alone decides) or the
    command line names the test itself (``tests/test_x.py::test_y``)."""
    if "slow" in (config.option.markexpr or ""):
        return
    named = {arg.split("::", 1)[1] for arg in config.args if "::" in arg}

    def left_out(item: pytest.Item) -> bool:
        test = item.nodeid.split("::", 1)[-1]
        return item.get_closest_marker("slow") is not None and not (
            test in named or test.split("[", 1)[0] in named
        )

    slow = [item for item in items if left_out(item)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not left_out(item)]
