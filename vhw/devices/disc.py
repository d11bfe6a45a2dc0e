"""Disc image files: open and check one, read its sealed chunks, verify or decrypt it, press it.

Opening a disc reads and checks only its first blocks and manifest; the data region is read chunk
by chunk on demand, so memory never grows with the title's size.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import crypto
from ..errors import ImageError, IntegrityError
from ..formats import disc as fmt
from ..ids import Id
from .files import fsync_dir, open_regular, refuse_existing, write_error

__all__ = ["DiscImage", "press"]


READ_BATCH = 16  # chunks per read when streaming a whole file: 1 MiB reads, few syscalls


class DiscImage:
    """An open, checked disc image. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path, fd: int, disc: fmt.Disc, manifest_region: bytes):
        self.path = path
        self._fd = fd
        self.disc = disc
        self.manifest_region = manifest_region

    @classmethod
    def open(cls, path: Path) -> DiscImage:
        path = Path(path)
        fd = open_regular(path, os.O_RDONLY, fmt.WHAT)
        try:
            size = os.fstat(fd).st_size
            disc, region = fmt.decode(lambda n, off: os.pread(fd, n, off), size=size, path=path)
            return cls(path, fd, disc, region)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DiscImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manifest(self) -> fmt.Manifest:
        return self.disc.manifest

    # -- reading ------------------------------------------------------------------------------

    def read_sealed(self, f: fmt.DiscFile, first: int, count: int = 1) -> bytes:
        """The sealed bytes of chunks ``first .. first + count - 1`` of ``f``."""
        offset, n = self._sealed_range(f, first, count)
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise ImageError(self.path, f"truncated {fmt.WHAT}")
        return data

    def _sealed_range(self, f: fmt.DiscFile, first: int, count: int) -> tuple[int, int]:
        """Where in the image the sealed bytes of chunks ``first .. first + count - 1`` of ``f``
        (those that exist) lie: (offset, length); the length is 0 past the file's last chunk."""
        layout = f.layout
        last = min(first + count, layout.count) - 1
        if first > last:
            return self.disc.data_offset + f.offset, 0
        start = layout.sealed_offset(first)
        n = layout.sealed_offset(last) + layout.sealed_length(last) - start
        return self.disc.data_offset + f.offset + start, n

    def read_sealed_into(self, f: fmt.DiscFile, first: int, count: int, buffer: bytearray | memoryview) -> int:
        """Read the sealed bytes of chunks ``first .. first + count - 1`` of ``f`` into ``buffer``
        (a reused one: no new allocation per read); returns how many bytes that is. Safe to call
        from several threads at once."""
        offset, n = self._sealed_range(f, first, count)
        if os.preadv(self._fd, [memoryview(buffer)[:n]], offset) != n:
            raise ImageError(self.path, f"truncated {fmt.WHAT}")
        return n

    def iter_sealed(self, f: fmt.DiscFile, *, start: int = 0) -> Iterator[tuple[int, memoryview]]:
        """(index, sealed chunk) for every chunk of ``f`` from ``start``, read in batches."""
        layout = f.layout
        for first in range(start, layout.count, READ_BATCH):
            batch = memoryview(self.read_sealed(f, first, READ_BATCH))
            pos = 0
            for i in range(first, min(first + READ_BATCH, layout.count)):
                n = layout.sealed_length(i)
                yield i, batch[pos : pos + n]
                pos += n

    def decrypt(self, f: fmt.DiscFile, content_key: bytes, *, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """(index, plaintext) for every chunk of ``f``; a chunk that fails raises IntegrityError."""
        cipher = crypto.ChunkCipher(content_key, f.stream_id, f.size)
        for i, sealed in self.iter_sealed(f, start=start):
            try:
                yield i, cipher.open(i, sealed)
            except crypto.Invalid:
                raise IntegrityError(
                    self.path, f"{f.path}: chunk {i} does not decrypt (damaged disc or wrong key)"
                ) from None

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every file's sealed bytes against the signed manifest (no key needed)."""
        for f in self.manifest.files:
            h = hashlib.sha256()
            for _, sealed in self.iter_sealed(f):
                h.update(sealed)
                if progress:
                    progress(len(sealed))
            if h.digest() != f.sealed_sha256:
                raise IntegrityError(self.path, f"{f.path}: data does not match the signed manifest")


def press(
    master: Path,
    out: Path,
    *,
    pressing: fmt.Pressing,
    mid: Id | None,
    sign: Callable[[bytes], bytes],
    secret: bytes | None = None,
) -> None:
    """Write a copy of ``master`` whose MID area is new; nothing else differs. ``secret``: the
    disc's own key (with a MID), whose public half the publisher registers with the MID."""
    out = Path(out)
    refuse_existing(out, fmt.WHAT)
    with DiscImage.open(master) as image:
        if image.disc.pressing is not fmt.Pressing.MASTER:
            raise ImageError(master, "is a pressed disc, not a master image")
        digest = image.disc.title_digest
    disc_key = crypto.public_bytes(crypto.signing_key_from(secret)) if secret else None
    signature = sign(fmt.mid_signed_message(digest, pressing, mid, disc_key))
    block = fmt.encode_mid_area(pressing, mid, secret, signature)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(master, tmp)  # copy_file_range/sendfile: no user-space buffer
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.pwrite(fd, block, fmt.MID_AREA_OFFSET)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(out, "disc", exc) from None
    fsync_dir(out.parent)
