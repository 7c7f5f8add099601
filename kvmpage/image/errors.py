"""Errors of the memory-image readers: every message names the file."""

from __future__ import annotations


class ImageError(ValueError):
    """A memory image that cannot be used: unreadable, truncated, inconsistent, or in a format
    kvmpage does not read (the message names the file, the format and, where one exists, the
    command that converts it)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message
