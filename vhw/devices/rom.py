"""Console ROM files: burned once (atomically, never over an existing file), then only read."""

from __future__ import annotations

from pathlib import Path

from ..formats import rom as fmt
from .files import atomic_write, read_small, refuse_existing

__all__ = ["burn", "load"]


def burn(path: Path, rom: fmt.Rom) -> None:
    path = Path(path)
    refuse_existing(path, fmt.WHAT)
    atomic_write(path, fmt.encode(rom), mode=0o600)  # it holds the console's secret


def load(path: Path) -> fmt.Rom:
    path = Path(path)
    return fmt.decode(read_small(path, fmt.WHAT), path=path)
