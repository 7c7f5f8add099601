"""The CPUID table every KVM guest gets, built once per device and process.

Without KVM_SET_CPUID2 a guest sees zeros; every machine is given the host's supported table
(KVM_GET_SUPPORTED_CPUID), which is asked for once per device. What the guest then sees
(KVM_GET_CPUID2) is cached too: it is the ground truth for which paging features a guest has.
"""

from __future__ import annotations

import ctypes
from typing import Any, ClassVar

from kvmpage.kvm import abi
from kvmpage.kvm.handles import Kvm
from kvmpage.kvm.host import CpuidSummary

__all__ = ["CpuidCache"]


class CpuidCache:
    """The CPUID table every machine gets (the host's supported table), built once per device."""

    buffers: ClassVar[dict[str, ctypes.Structure]] = {}
    granted: ClassVar[dict[str, CpuidSummary]] = {}
    nx: ClassVar[dict[str, bool]] = {}

    @classmethod
    def supports_nx(cls, kvm: Kvm) -> bool:
        """Whether the CPUID given to guests has NX (then EFER.NXE is on and NX bits are legal)."""
        nx = cls.nx.get(kvm.path)
        if nx is None:
            buf: Any = cls.buffer(kvm)
            entries = buf.entries[: buf.nent]
            nx = any(e.function == 0x8000_0001 and e.edx >> 20 & 1 for e in entries)
            cls.nx[kvm.path] = nx
        return nx

    @classmethod
    def buffer(cls, kvm: Kvm) -> ctypes.Structure:
        cached = cls.buffers.get(kvm.path)
        if cached is None:
            entries = kvm.supported_cpuid()
            buf: Any = abi.cpuid2_type(len(entries))()
            buf.nent = len(entries)
            for i, e in enumerate(entries):
                buf.entries[i] = e
            cls.buffers[kvm.path] = cached = buf
        return cached
