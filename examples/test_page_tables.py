"""An example of kvmpage in your own test suite (pytest).

Installing kvmpage installs its pytest plugin: the ``kvm`` marker (skips where /dev/kvm is
unusable, fails instead with KVMPAGE_REQUIRE_KVM=1) and the ``kvmpage_layout`` and
``kvmpage_machine`` fixtures. Run it with ``pytest examples/test_page_tables.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpage.testing import assert_hardware_agrees

HERE = Path(__file__).parent

KERNEL = """
name = "our-kernel"
memory = "32M"

[[mapping]]
name = "text"
virt = 0xffffffff80000000
page_size = "2M"
count = 2
flags = ["GLOBAL"]

[[mapping]]
name = "data"
virt = 0xffffffff80400000
page_size = "4K"
count = 16
flags = ["WRITABLE", "NO_EXECUTE", "GLOBAL"]
"""


def test_the_layout_builds_what_we_mean(kvmpage_layout) -> None:  # type: ignore[no-untyped-def]
    """No KVM needed: the software walk of the tables kvmpage built."""
    built = kvmpage_layout(KERNEL)
    text = built.spec.mappings[0]
    assert built.mapper.translate_addr(_va(text.virt)) is not None


@pytest.mark.kvm
def test_the_cpu_agrees_with_our_tables() -> None:
    """On the real MMU: a disagreement fails with the verifier's explanation."""
    report = assert_hardware_agrees(KERNEL)
    assert report.probes > 0


@pytest.mark.kvm
def test_a_layout_file_on_the_cpu() -> None:
    assert_hardware_agrees(HERE / "kernel.toml")


def _va(value: int):  # type: ignore[no-untyped-def]
    from kvmpage import VirtAddr

    return VirtAddr(value)
