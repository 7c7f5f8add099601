"""The TCG stub (guest/tcg.s, shipped as kvmpage/tcg/stub.bin) and the offsets it publishes.

The stub's first bytes are a header: a magic, the offset of each entry point the host starts
(the probe and service loops, the instructions whose faults it recognises, the CPUID and CR4
helpers) and the stub's length. `stub_image` reads and checks it once, so a stale or foreign
stub.bin is refused with one clear error instead of running at wrong offsets.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from importlib import resources

from kvmpage.machine import layout as L
from kvmpage.tcg.errors import TcgError

__all__ = ["StubImage", "stub_image"]

_STUB_MAGIC = b"KVMPTCG1"
_HEADER = struct.Struct("<8s11I")


@dataclass(frozen=True, slots=True)
class StubImage:
    """The assembled stub (kvmpage/tcg/stub.bin) and the offsets its header publishes."""

    code: bytes
    probe_loop: int
    read_insn: int
    write_insn: int
    call_insn: int
    stop: int
    service_loop: int
    enter_user: int
    calib_gp: int
    cpuid_insn: int
    cr4_or: int

    @classmethod
    def parse(cls, code: bytes) -> StubImage:
        magic, *offsets, end = _HEADER.unpack_from(code)
        if magic != _STUB_MAGIC or end != len(code) or len(code) > L.PAGE:
            raise TcgError("kvmpage/tcg/stub.bin is not the TCG stub this kvmpage expects")
        return cls(code, *offsets)


@functools.cache
def stub_image() -> StubImage:
    """The shipped stub, read once."""
    return StubImage.parse(resources.files("kvmpage.tcg").joinpath("stub.bin").read_bytes())
