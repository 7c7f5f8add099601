"""Layouts: an address space described as data, built with the software mapper, and listed.

A `LayoutSpec` is a list of mappings (virtual range, page size, physical range or
``"allocate"``, flags) with the mapper kind and the CPU state it runs under. It comes from a
TOML layout file (`load_layout`, `parse_layout`; the format is docs/layout.md), from
`builtin_layout`, or from Python. `build` writes its tables into a physical memory with one of
the three mappers. What the tables map is listed as `Run`\\ s of pages with equal attributes
(`runs_of`, `format_runs`), audited (`kvmpage.layout.audit.audit`: W+X, also across
aliases, user pages in the kernel half, writable tables...; its `Finding` and `KINDS` are
here) and compared (`kvmpage.layout.diff.diff`, `format_diff`).

Layouts know nothing of machines: placing one in a guest beside the kvmpage agent is the
commands' job (`kvmpage.cli.placement`).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmpage.layout.audit import KINDS, Finding
    from kvmpage.layout.builtin import builtin_layout
    from kvmpage.layout.diff import Change, format_diff
    from kvmpage.layout.dump import Run, format_runs, runs_of
    from kvmpage.layout.spec import (
        BuiltLayout,
        LayoutError,
        LayoutSpec,
        MappingSpec,
        build,
        check,
        check_physical,
    )
    from kvmpage.layout.toml_file import load_layout, parse_layout

#: Where each public name lives: the package imports a module when one of its names is first
#: used (`kvmpage dump --image` needs the listing and the audit, not the TOML reader or the
#: mappers, and starts faster for it).
_HOME = {
    "KINDS": "audit", "Finding": "audit",
    "builtin_layout": "builtin",
    "Change": "diff", "format_diff": "diff",
    "Run": "dump", "format_runs": "dump", "runs_of": "dump",
    "BuiltLayout": "spec", "LayoutError": "spec", "LayoutSpec": "spec", "MappingSpec": "spec",
    "build": "spec", "check": "spec", "check_physical": "spec",
    "load_layout": "toml_file", "parse_layout": "toml_file",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'kvmpage.layout' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"kvmpage.layout.{home}"), name)


__all__ = [
    "KINDS",
    "BuiltLayout",
    "Change",
    "Finding",
    "LayoutError",
    "LayoutSpec",
    "MappingSpec",
    "Run",
    "build",
    "builtin_layout",
    "check",
    "check_physical",
    "format_diff",
    "format_runs",
    "load_layout",
    "parse_layout",
    "runs_of",
]
