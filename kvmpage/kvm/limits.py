"""How much guest memory this host can give, and why: checked when a layout is read.

A guest's RAM is one anonymous mapping of the host process, registered with KVM as one
memslot. What bounds it, smallest first on a usual host:

- **RAM and swap** (``MemTotal + SwapTotal`` in /proc/meminfo): a guest larger than that
  could never have all its memory backed. kvmpage maps guest memory with ``MAP_NORESERVE``,
  so a larger mapping would be accepted and only fail (or summon the OOM killer) once used;
  the heuristic overcommit of Linux refuses such a mapping outright without the flag, which
  is the bare ``ENOMEM`` a 28 GiB layout used to end with.
- **Strict overcommit** (``vm.overcommit_memory = 2``): ``MAP_NORESERVE`` is ignored and
  every mapping is charged at once, so the limit is ``CommitLimit - Committed_AS``.
- **The address-space limit** of the process (``ulimit -v``, ``RLIMIT_AS``), minus what the
  process already maps.
- **KVM's largest memslot**: 2**31 - 1 pages of 4 KiB (``KVM_MEM_MAX_NR_PAGES``, about 8 TiB).

`guest_memory_limit` returns the smallest of these with its reason, read afresh each time
(a few /proc reads).
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass

#: KVM_MEM_MAX_NR_PAGES (include/linux/kvm_host.h): the largest memslot, in 4 KiB pages.
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1


@dataclass(frozen=True)
class MemoryLimit:
    """At most ``size`` bytes of guest memory; ``why`` says which limit that is."""

    size: int
    why: str


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty when it cannot be read)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _overcommit_mode() -> int | None:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _mapped_now() -> int:
    """Bytes of address space this process maps (VmSize), 0 when unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def guest_memory_limit() -> MemoryLimit:
    """The most guest memory this host can give one machine, and why (see the module doc)."""
    limits = [
        MemoryLimit(
            KVM_MEM_MAX_NR_PAGES * 4096,
            "KVM's largest memory slot, KVM_MEM_MAX_NR_PAGES pages of 4 KiB",
        )
    ]
    info = _meminfo()
    if "MemTotal" in info:
        limits.append(
            MemoryLimit(
                info["MemTotal"] + info.get("SwapTotal", 0),
                "this host's RAM and swap (MemTotal + SwapTotal in /proc/meminfo): more could "
                "never be backed",
            )
        )
    if _overcommit_mode() == 2 and "CommitLimit" in info:
        limits.append(
            MemoryLimit(
                max(info["CommitLimit"] - info.get("Committed_AS", 0), 0),
                "strict overcommit (vm.overcommit_memory = 2): CommitLimit - Committed_AS in "
                "/proc/meminfo",
            )
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(
            MemoryLimit(
                max(soft - _mapped_now(), 0),
                "the process's address-space limit (ulimit -v, RLIMIT_AS) minus what it maps",
            )
        )
    return min(limits, key=lambda limit: limit.size)
