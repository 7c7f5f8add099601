"""Errors of the tcg oracle."""

from __future__ import annotations

from kvmpage.machine.errors import MachineError


class TcgError(MachineError):
    """The TCG engine could not do what the oracle needs (a Unicorn build kvmpage cannot read,
    an emulation error)."""


class TcgUnavailable(TcgError):
    """The tcg oracle cannot run here: Unicorn is missing or of another version. The message
    says how to install it."""
