"""kvmpage: x86-64 page tables built in Python and checked against the CPU through KVM.

``kvmpage.addr`` and ``kvmpage.paging`` are the software model (a port of the paging module of
the Rust crate ``x86_64``); ``kvmpage.memory`` is the physical memory they write into.
"""

from kvmpage import _early

if _early.is_console_script():  # first thing: a Ctrl-C while the command starts is one line
    _early.stop_on_signals()

from kvmpage.addr import (
    PhysAddr,
    PhysAddrNotValid,
    VirtAddr,
    VirtAddr57,
    VirtAddrNotValid,
    align_down,
    align_up,
)
from kvmpage.memory import PhysMemory, PhysMemoryError
from kvmpage.panic import Panic

__version__ = "0.1.0"

__all__ = [
    "Panic",
    "PhysAddr",
    "PhysAddrNotValid",
    "PhysMemory",
    "PhysMemoryError",
    "VirtAddr",
    "VirtAddr57",
    "VirtAddrNotValid",
    "align_down",
    "align_up",
]
