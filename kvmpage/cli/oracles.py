"""The oracles a command can check against: ``kvm`` (the CPU through /dev/kvm), ``tcg``
(QEMU's TCG MMU through Unicorn, `kvmpage.tcg`) or ``both``.

Nothing here falls back silently: without /dev/kvm the default oracle stops with the reason and
suggests ``--oracle tcg``; without Unicorn ``--oracle tcg`` stops with the install command.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from kvmpage.cli.errors import CliError

if TYPE_CHECKING:
    from kvmpage.machine import HostProfile, Machine
    from kvmpage.tcg import TcgMachine

from kvmpage.verify.oracles import CROSS

ORACLES = ("kvm", "tcg", "both")
__all__ = ["CROSS", "ORACLES", "kvm_missing", "open_machine", "profile_of", "tcg_problem"]


def tcg_problem() -> str | None:
    """Why the tcg oracle cannot run here (with the install command), or None."""
    from kvmpage.tcg import available

    return available()


def kvm_missing(error: OSError) -> CliError:
    """The error to show when KVM cannot be used: the reason, and what works without it."""
    hint = "kvmpage verify --oracle tcg checks the tables on QEMU's TCG MMU instead"
    if tcg_problem() is not None:
        from kvmpage.tcg import INSTALL_HINT

        hint += f" ({INSTALL_HINT})"
    return CliError(f"{error} (kvmpage dump works without KVM; {hint})")


def profile_of(oracle: str, device: str) -> HostProfile:
    """What ``oracle`` can check here (tried in a guest, cached per process)."""
    if oracle == "tcg":
        problem = tcg_problem()
        if problem is not None:
            raise CliError(f"--oracle tcg: {problem}")
        from kvmpage.tcg.machine import tcg_profile

        return tcg_profile()
    from kvmpage.machine import KvmError, host_profile

    try:
        return host_profile(device)
    except KvmError as e:
        raise kvm_missing(e) from e


def open_machine(
    oracle: str, memory_size: int, *, device: str, agent_slot: int, la57: bool = False
) -> AbstractContextManager[Machine | TcgMachine]:
    """A new machine of ``oracle`` (``kvm`` or ``tcg``), to use in a ``with``; ``la57``: with
    5-level paging (CR4.LA57; the tcg oracle only: no KVM machine boots with it)."""
    if oracle == "tcg":
        from kvmpage.tcg import TcgMachine

        return TcgMachine(memory_size, agent_slot=agent_slot, la57=la57)
    if la57:
        raise CliError(
            "the KVM machine boots with 4-level paging: 5-level tables (CR4.LA57) are checked "
            "with --oracle tcg"
        )
    from kvmpage.machine import Machine

    return Machine(memory_size, device=device, agent_slot=agent_slot)
