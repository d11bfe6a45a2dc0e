"""The compiled data path: the mount's read path and the install's crypto, in C (``_core``).

Python keeps the brain: it derives every key, reads and checks the HDD's superblock and catalog,
and decides; this package hands the compiled side only what it needs, already checked: each file's
extents and sizes, its stream key and associated data. The C side reads nothing of an HDD image
but sealed blocks and their tags, and uses a block only once its tag verifies.

* :func:`reseal`: the install's inner loop, a piece of a disc's chunks opened and sealed again as
  HDD blocks, without the interpreter's lock (several pieces at once from the install's threads).
* :class:`TitleMount`: the decrypting, read-only FUSE file system of a console's titles, served
  by a fixed pool of threads on libfuse3's low-level API (:mod:`vhw.console.mount` runs it).

The sources are ``core.h``, ``blocks.c``, ``mount.c`` and ``module.c`` beside this file; ``setup.py``
builds them with hardening flags (``pip install``, ``tools/setup.sh``), and with AddressSanitizer
and UndefinedBehaviorSanitizer for the suite's sanitizer run (``VHW_SANITIZE=1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import crypto
from ..errors import StateError
from ..formats.common import Extent
from . import _core

__all__ = ["DiscChunkInvalid", "MountFile", "MountNode", "TitleMount", "reseal", "sanitized"]


THREADS = 4  # serving threads: 8 readers at once got 2x one reader's rate with 4 in a probe on 2 cores


class DiscChunkInvalid(Exception):
    """A chunk of the disc did not verify while it was re-sealed (``index`` names it)."""

    def __init__(self, index: int):
        super().__init__(f"chunk {index} does not decrypt")
        self.index = index


def reseal(
    disc: crypto.StreamSecret,
    hdd: crypto.StreamSecret,
    *,
    size: int,
    block_size: int,
    first: int,
    count: int,
    sealed: bytes | bytearray | memoryview,
    data: bytearray | memoryview,
    tags: bytearray | memoryview,
) -> int:
    """Open ``count`` of a disc file's chunks from chunk ``first`` (``sealed``: as the disc holds
    them) and seal their plaintext as HDD blocks: ciphertext into ``data``, block after block,
    tags into ``tags``. ``size``: the file's plaintext bytes. Returns the bytes written to ``data``;
    raises :class:`DiscChunkInvalid` for a chunk that does not verify."""
    n = _core.reseal(
        disc_key=disc.key,
        disc_ad=disc.ad_prefix,
        hdd_key=hdd.key,
        hdd_ad=hdd.ad_prefix,
        size=size,
        chunk_size=crypto.CHUNK_SIZE,
        block_shift=block_size.bit_length() - 1,
        first=first,
        count=count,
        sealed=sealed,
        data=data,
        tags=tags,
    )
    if n < 0:
        raise DiscChunkInvalid(-1 - n)
    return n


def sanitized() -> bool:
    """Whether the compiled part was built with AddressSanitizer (the suite's sanitizer run)."""
    return _core.sanitized()


@dataclass(frozen=True)
class MountNode:
    """A folder or file of the mount; inode numbers are positions in the node list, from 1."""

    parent: int
    name: bytes
    file: int = -1  # index into the files, -1 for a folder
    mtime_ns: int = 0
    readable: bool = True  # False: another user's title, listed but never opened
    executable: bool = False


@dataclass(frozen=True)
class MountFile:
    """What the compiled side needs to read one file: sizes, where its stream lies, its secret."""

    size: int
    block_size: int
    extents: tuple[Extent, ...]
    secret: crypto.StreamSecret = field(repr=False)
    label: str  # "TITLE, file PATH", for the log


class TitleMount:
    """The decrypting FUSE file system of ``nodes`` (the root first) over the image ``image_fd``.

    :meth:`start` mounts and serves in C threads; :meth:`wait` waits for the file system to be
    unmounted; :meth:`revoke` wipes the keys (every open and read is refused from then on);
    :meth:`invalidate` has the kernel drop its cached pages; :meth:`stop` unmounts and frees."""

    def __init__(self, image_fd: int, nominal_size: int, nodes: Sequence[MountNode], files: Sequence[MountFile]):
        try:
            self._mount: _core.Mount | None = _core.Mount(
                image_fd,
                nominal_size,
                [(n.parent, n.name, n.file, n.mtime_ns, n.readable, n.executable) for n in nodes],
                [
                    (
                        f.size,
                        f.block_size.bit_length() - 1,
                        [(e.offset, e.length) for e in f.extents],
                        f.secret.key,
                        f.secret.ad_prefix,
                        f.label,
                    )
                    for f in files
                ],
            )
        except OSError as exc:
            raise StateError(f"cannot serve the titles: {exc}") from None

    def _live(self) -> _core.Mount:
        if self._mount is None:
            raise StateError("the mount was stopped")
        return self._mount

    def start(self, mountpoint: str, options: str, *, threads: int = THREADS) -> None:
        try:
            self._live().start(mountpoint, options, threads)
        except OSError as exc:
            self.stop()
            raise StateError(f"{mountpoint}: cannot mount ({exc.strerror or exc})") from None

    def wait(self, timeout: float) -> bool:
        """True once the file system was unmounted (or stopped); False after ``timeout`` seconds."""
        return self._mount is None or self._mount.wait(timeout)

    def revoke(self) -> None:
        self._live().revoke()

    def invalidate(self) -> None:
        self._live().invalidate()

    def stop(self) -> None:
        mount, self._mount = self._mount, None
        if mount is not None:
            mount.stop()
