"""Memory card files: formatted once, then rewritten whole and atomically by each flow.

A card is small, so every change writes a new file and renames it over the old one: after a crash
the card is either as before or as after. Changes are read-modify-write under a lock on a sidecar
file (the card's own inode is replaced by each write, so it cannot carry the lock itself).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..formats import card as fmt
from .files import atomic_write, check_regular, locked, read_small, refuse_existing


def create(path: Path, card: fmt.Card) -> None:
    path = Path(path)
    refuse_existing(path, fmt.WHAT)
    atomic_write(path, fmt.encode(card), mode=0o600)  # it holds the MC-Key: owner only


def load(path: Path) -> fmt.Card:
    path = Path(path)
    return fmt.decode(read_small(path, fmt.WHAT), path=path)


def save(path: Path, card: fmt.Card) -> None:
    atomic_write(Path(path), fmt.encode(card), mode=0o600)


@contextlib.contextmanager
def transaction(path: Path, *, wait: bool = True) -> Iterator[fmt.Card]:
    """Lock the card and yield it; callers write their change with :func:`save` inside the block."""
    path = Path(path)
    check_regular(path, fmt.WHAT)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with locked(fd, path, fmt.WHAT, wait=wait):
            yield load(path)
    finally:
        os.close(fd)
