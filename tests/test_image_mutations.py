"""Corrupt images: thousands of header mutations give a clear `ImageError` or a usable image,
never another exception, never a hang, and never a write to the file.

Each case mutates a small real image (the stripped tables of a Linux guest, an ELF core) or a
small LiME file: random bytes in the ELF header, program headers and notes, random 64-bit
values in header fields, and truncations; then opens it, resolves its CPU state, scans its
tables and walks an address, as ``kvmpage dump --image`` would.
"""

from __future__ import annotations

import pathlib
import random
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from image_support import built_builtin, linux_image, sha256, write_image

from kvmpage.image import ImageError, open_image
from kvmpage.memory import PhysMemoryError
from kvmpage.paging.leaves import TooManyLeaves

CASES = 1200
EXPECTED = (ImageError, PhysMemoryError, TooManyLeaves)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"an image case took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def exercise(path: pathlib.Path) -> str:
    """What ``dump --image`` does with a file, up to the first error; returns the outcome."""
    try:
        with open_image(path) as image:
            ctx = image.context(cr3=0x1000 if not image.cpus else None)
            leaves = image.leaves(ctx, limit=200_000)
            image.walk(0xFFFF_8880_0000_0000, ctx)
            return f"ok {len(leaves)}"
    except EXPECTED as e:
        assert str(path) in str(e) or isinstance(e, (PhysMemoryError, TooManyLeaves))
        return type(e).__name__


def mutations(data: bytes, rng: random.Random, head: int) -> Iterator[bytes]:
    """Random corruptions of the first ``head`` bytes (the headers), and truncations."""
    while True:
        kind = rng.randrange(4)
        out = bytearray(data)
        if kind == 0:  # a few random bytes
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(head)] = rng.randrange(256)
        elif kind == 1:  # a 64-bit field set to an extreme or random value
            at = rng.randrange(0, head - 8, 4)
            value = rng.choice([0, 1, (1 << 64) - 1, 1 << 63, rng.getrandbits(64), len(data)])
            struct.pack_into("<Q", out, at, value)
        elif kind == 2:  # a 16- or 32-bit field
            at = rng.randrange(0, head - 4, 2)
            struct.pack_into("<H" if rng.random() < 0.5 else "<I", out, at, rng.getrandbits(16))
        else:  # cut short
            del out[rng.randrange(1, len(out)) :]
        yield bytes(out)


@pytest.mark.parametrize("source", ["elf", "lime"])
def test_mutated_images_fail_clearly(source: str, tmp_path: pathlib.Path) -> None:
    if source == "elf":
        data = linux_image("nopti", tmp_path).read_bytes()
        head = 0x2000  # ELF header, program headers, notes
    else:
        built = built_builtin()
        try:
            lime = write_image(built, tmp_path / "b.lime", "lime", ranges=[(0, 0x20000)])
        finally:
            built.close()
        data = lime.read_bytes()
        head = 64
    rng = random.Random(20261204)
    path = tmp_path / "case"
    outcomes: dict[str, int] = {}
    for _, case in zip(range(CASES // 2), mutations(data, rng, head), strict=False):
        path.write_bytes(case)
        digest = sha256(path)
        with deadline(10):
            outcome = exercise(path).split()[0]
        assert sha256(path) == digest  # never written
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert sum(outcomes.values()) == CASES // 2
    assert outcomes.get("ImageError", 0) > 20  # the mutations do reach the checks
