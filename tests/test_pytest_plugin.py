"""kvmpage's pytest plugin, as another project sees it: a temporary project that only installs
kvmpage (the entry point) gets the ``kvm`` marker and the fixtures (pytester)."""

from __future__ import annotations

import pytest

from kvmpage.testing import HardwareDisagrees, assert_hardware_agrees, layout_spec

pytest_plugins = ["pytester"]

LAYOUT = """
name = "tiny"
memory = "8M"
[[mapping]]
name = "data"
virt = 0x400000
count = 2
flags = ["WRITABLE", "USER", "NX"]
"""


def test_the_plugin_is_active_here(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("kvmpage")


def test_markers_and_fixtures_reach_another_project(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.kvm: needs a usable /dev/kvm*"])
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["kvmpage_machine*", "*", "kvmpage_layout*"])


def test_a_project_checks_its_tables(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_theirs=f'''
import pytest
from kvmpage.testing import assert_hardware_agrees

LAYOUT = """{LAYOUT}"""

def test_software(kvmpage_layout):
    built = kvmpage_layout(LAYOUT)
    assert built.spec.name == "tiny"

@pytest.mark.kvm
def test_on_the_cpu(kvmpage_machine):
    assert kvmpage_machine.agent_slot == 511
    assert assert_hardware_agrees(LAYOUT).ok
'''
    )
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)


def test_without_kvm_the_marker_skips_or_fails_as_asked(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_theirs="""
import pytest

@pytest.mark.kvm
def test_needs_kvm(kvmpage_machine):
    pass
"""
    )
    monkeypatch.setenv("KVMPAGE_KVM_DEVICE", "/nonexistent/kvm")
    monkeypatch.delenv("KVMPAGE_REQUIRE_KVM", raising=False)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*/nonexistent/kvm is not usable*"])
    monkeypatch.setenv("KVMPAGE_REQUIRE_KVM", "1")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)  # (a setup failure: the test never ran)
    result.stdout.fnmatch_lines(["*KVMPAGE_REQUIRE_KVM=1 but /nonexistent/kvm is not usable*"])


@pytest.mark.kvm
def test_a_disagreement_fails_with_the_explanation(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmpage.cli import common
    from kvmpage.verify import Predictor
    from kvmpage.verify.probes import Probe

    class Wrong(Predictor):
        def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
            entries, addrs = super().walk_of(probe)
            if entries and entries[-1] & 1:
                entries = (*entries[:-1], entries[-1] ^ 0x2)  # believes W is the other way
            return entries, addrs

    monkeypatch.setattr(common, "PREDICTOR", Wrong)
    with pytest.raises(HardwareDisagrees) as info:
        assert_hardware_agrees(layout_spec(LAYOUT))
    text = str(info.value)
    assert "the CPU disagrees with the software walk of 'tiny'" in text
    assert "software:" in text and "hardware:" in text and "PT   [" in text
