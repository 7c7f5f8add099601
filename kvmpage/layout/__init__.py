"""Layouts: an address space described as data, built with the software mapper, and listed.

A `LayoutSpec` is a list of mappings (virtual range, page size, physical range or
``"allocate"``, flags) with the mapper kind and the CPU state it runs under. It comes from a
TOML layout file (`load_layout`, `parse_layout`; the format is docs/layout.md), from
`builtin_layout`, or from Python. `build` writes its tables into a physical memory with one of
the three mappers. What the tables map is listed as `Run`\\ s of pages with equal attributes
(`runs_of`, `format_runs`), audited (`audit`: W+X, also across aliases, user pages in the
kernel half, writable tables...) and compared (`diff`).

Layouts know nothing of machines: placing one in a guest beside the kvmpage agent is the
commands' job (`kvmpage.cli.placement`).
"""

from kvmpage.layout.audit import KINDS, Finding, audit
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.diff import Change, diff, format_diff
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

__all__ = [
    "KINDS",
    "BuiltLayout",
    "Change",
    "Finding",
    "LayoutError",
    "LayoutSpec",
    "MappingSpec",
    "Run",
    "audit",
    "build",
    "builtin_layout",
    "check",
    "check_physical",
    "diff",
    "format_diff",
    "format_runs",
    "load_layout",
    "parse_layout",
    "runs_of",
]
