"""Moved to `kvmpage.paging.leaves`; this name stays for existing imports."""

from kvmpage.paging.leaves import Leaves

__all__ = ["Leaves"]
