"""`Panic`: the Python form of a Rust panic in the `x86_64` crate.

Where the crate panics (a failed assertion, an arithmetic overflow, an `expect` on a non-canonical
address), kvmpage raises `Panic` with the crate's message. It is deliberately not a subclass of
the crate's `Result` error families, so ``except MapToError`` never swallows a broken invariant.
"""

from __future__ import annotations


class Panic(Exception):
    """A condition under which the Rust crate would panic; the message is the crate's text."""
