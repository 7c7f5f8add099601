"""Page tables checked on a real MMU from *your* test suite: ``assert_hardware_agrees``.

    from kvmpage.testing import assert_hardware_agrees

    def test_our_kernel_layout_is_what_the_cpu_does():
        assert_hardware_agrees("layouts/kernel.toml")

The layout (a TOML file, TOML text, or a `kvmpage.layout.spec.LayoutSpec`) is built in a KVM
guest and every mapping is probed as ``kvmpage verify`` does. A disagreement fails the test
with the verifier's own explanation: what the software walk said, what the CPU did, and the
walk level by level. The pytest plugin (`kvmpage.pytest_plugin`, installed with kvmpage) adds
the ``kvm`` marker and the ``kvmpage_machine`` / ``kvmpage_layout`` fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmpage.layout.spec import LayoutSpec
from kvmpage.verify.report import Report

__all__ = ["HardwareDisagrees", "assert_hardware_agrees", "layout_spec"]

DEFAULT_DEVICE = os.environ.get("KVMPAGE_KVM_DEVICE", "/dev/kvm")


class HardwareDisagrees(AssertionError):
    """The CPU did not do what the software walk predicts; ``report`` holds every detail."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def layout_spec(layout: str | os.PathLike[str] | LayoutSpec) -> LayoutSpec:
    """A layout given as a `LayoutSpec`, a path to a TOML file, or TOML text."""
    from kvmpage.layout.toml_file import load_layout, parse_layout

    if isinstance(layout, LayoutSpec):
        return layout
    text = os.fspath(layout)
    if "\n" in text or "[[mapping]]" in text:
        return parse_layout(text, "<layout text>")
    if Path(text).exists() or text.endswith(".toml"):
        return load_layout(text)
    return parse_layout(text, "<layout text>")


def assert_hardware_agrees(
    layout: str | os.PathLike[str] | LayoutSpec,
    oracle: str = "kvm",
    *,
    device: str = DEFAULT_DEVICE,
    limit: int = 10,
) -> Report:
    """Build ``layout`` on ``oracle`` (``kvm``, or ``tcg``: QEMU's TCG MMU, no /dev/kvm
    needed, ``pip install 'kvmpage[tcg]'``) and probe every mapping; return the report when
    the oracle agrees with the software walk on every probe, else raise `HardwareDisagrees`
    whose message explains the first ``limit`` disagreements in full."""
    from kvmpage.cli.common import on_machine
    from kvmpage.cli.progress import Progress
    from kvmpage.verify import PlanOptions

    if oracle not in ("kvm", "tcg"):
        raise ValueError(f"oracle {oracle!r}: kvmpage checks on 'kvm' or 'tcg'")
    spec = layout_spec(layout)
    with (
        Progress(enabled=False) as progress,
        on_machine(spec, device, progress, oracle=oracle) as machine,
    ):
        report = machine[2].verify(PlanOptions())
    if not report.ok:
        name = spec.name if spec.source.startswith("<") else (spec.source or spec.name)
        head = (
            f"the CPU disagrees with the software walk of {name!r} on "
            f"{len(report.disagreements)} of {report.probes} probes"
        )
        raise HardwareDisagrees(f"{head}\n{report.format(limit=limit)}", report)
    return report
