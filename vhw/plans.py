"""Plans: every change to a crash-safe device file as an ordered list of writes and barriers.

A plan is computed from a device's current state alone, without I/O (:mod:`vhw.stores.hdd` for the
HDD, :mod:`vhw.stores.card` for the memory card). A tiny executor in :mod:`vhw.devices` applies it
(``pwrite`` for a :class:`Write`, ``fsync`` for a :class:`Sync`); crash tests apply every prefix of
a plan instead, tear its last write, and check that the file still opens as the old state or the
new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Write:
    offset: int
    data: bytes | bytearray | memoryview

    def __repr__(self) -> str:
        return f"Write({self.offset}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class Sync:
    pass


Op = Write | Sync
SYNC = Sync()


def shifted(ops: Iterable[Op], base: int) -> list[Op]:
    """The same plan for a device that lies ``base`` bytes into a larger file (the HDD's internal
    memory is a card image inside the HDD image)."""
    return [Write(op.offset + base, op.data) if isinstance(op, Write) else op for op in ops]
