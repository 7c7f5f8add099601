"""Errors of the machine layer: the guest misbehaved, ran too long, or a layout broke a rule."""

from __future__ import annotations


class MachineError(Exception):
    """Base of every machine-level error."""


class GuestCrashError(MachineError):
    """The guest stopped in a way the agent did not plan (unexpected exception, shutdown,
    failed entry, internal KVM error). ``dump`` holds the registers at that point."""

    def __init__(self, message: str, dump: dict[str, int]) -> None:
        self.dump = dump
        super().__init__(f"{message}\n{format_dump(dump)}")


class WatchdogTimeout(MachineError, TimeoutError):
    """A batch ran longer than its timeout and was stopped."""


class AgentSlotConflict(MachineError, ValueError):
    """A user layout uses the PML4 slot the agent reserves."""


class BatchError(MachineError, ValueError):
    """A batch cannot be run as written (too large, bad address, CR3 without the agent)."""


class MachineClosedError(MachineError):
    """The machine was closed (or destroyed after an unrecoverable guest failure)."""


def format_dump(dump: dict[str, int]) -> str:
    """Registers four to a line, in hex."""
    items = [f"{k:>10}={v:#018x}" for k, v in dump.items()]
    return "\n".join("  ".join(items[i : i + 4]) for i in range(0, len(items), 4))
