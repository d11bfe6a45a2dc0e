"""HDD image files: format, open (choosing the current superblock), apply plans, read, check.

The logic is in :mod:`vhw.stores.hdd`; this module owns the file descriptor, the lock and the executor
that applies a plan (``pwrite`` for a Write, ``fsync`` for a Sync). Writers hold an exclusive
``flock`` on the image for as long as they have it open; a mount holds a shared one, so titles do
not change under it. Locks die with their process: a killed install or mount leaves none behind.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Generator, Iterable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from .. import crypto
from ..errors import ImageError, IntegrityError
from ..formats import card as card_fmt
from ..formats import hdd as fmt
from ..formats.card import Card
from ..formats.common import BLOCK_SIZE
from ..ids import Id
from ..plans import Op, Write, shifted
from ..stores.ditto import Opened, commit_twice, read_current, rolled_back
from ..stores.hdd import LAYOUT, Volume, format_plan, piece_blocks, piece_checksum, piece_count, piece_digest
from . import card as card_image
from .card import CardImage
from .files import OpenDevice, apply_op, apply_ops, create_image, locked, open_regular

__all__ = ["HddImage"]


Plan = Generator[Op, None, Volume]
# A streaming plan's contiguous writes of at least WRITEBACK_HINT bytes each start their writeback
# once they add up to WRITEBACK_RUN: the disk gets large writes, and the plan's next Sync waits for
# little (the kernel would otherwise hold the pages until it, or for 30 s). One hint per 1 MiB write
# cut the disk's writes to 0.52 MiB on average; one per 8 MiB gives 1.6 MiB (/sys/block/*/stat over
# 1 GiB installs), and a 1 GiB install took 4.6 s instead of 5.4 s (with the disc read ahead then).
WRITEBACK_HINT = 1024 * 1024
WRITEBACK_RUN = 8 * 1024 * 1024


def read_volume(read: Callable[[int, int], bytes], path: object, file_size: int) -> Opened[Volume]:
    """The current generation of an HDD image (:func:`vhw.stores.ditto.read_current`).
    ``read(length, offset)`` reads the image (a file, or bytes in memory)."""
    return read_current(LAYOUT, read, path, file_size)


class HddImage(OpenDevice):
    """An open HDD image. Open with :meth:`open` (or :meth:`format`), use as a context manager."""

    what = fmt.WHAT

    def __init__(self, path: Path, fd: int, opened: Opened[Volume], stack: ExitStack):
        super().__init__(path, fd, stack)
        self.path = path
        self.volume = opened.state
        self.notes = opened.notes
        self.damage = opened.damage

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def format(
        cls,
        path: Path,
        *,
        hdd_id: Id,
        secret: bytes,
        size: int,
        formatted: int,
        memory: Card | None = None,
        memory_capacity: int = card_fmt.DEFAULT_CAPACITY,
        block_size: int = crypto.HDD_BLOCK_SIZE,
    ) -> None:
        """Make a new, empty, sparse image of nominal ``size`` bytes with the HDD's ``secret``.
        ``memory``: give it an internal memory, a card image with these items and a save area of
        ``memory_capacity`` bytes, at the start of the data area. ``block_size``: the blocks titles
        installed on it are encrypted in."""
        path = Path(path)
        if size < fmt.MIN_SIZE:
            raise ImageError(path, f"an HDD must be at least {fmt.MIN_SIZE} bytes")
        sb = fmt.Superblock(hdd_id, secret, size, formatted, generation=0, block_size=block_size)
        memory_ops: list[Op] = []
        if memory is not None:
            memory_ops = card_image.format_ops(memory, memory_capacity)
            length = card_fmt.image_size(-(-memory_capacity // BLOCK_SIZE) * BLOCK_SIZE)
            if fmt.DATA_START + length + 4 * BLOCK_SIZE > size:  # (and room for the catalog's two copies)
                raise ImageError(path, "the HDD is too small for its internal memory")
            sb = replace(sb, memory_offset=fmt.DATA_START, memory_length=length)
            memory_ops = shifted(memory_ops, fmt.DATA_START)
        ops, _ = format_plan(sb)
        create_image(path, size, memory_ops + ops, fmt.WHAT)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        write: bool = False,
        shared_lock: bool = False,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
        damaged: bool = False,
    ) -> HddImage:
        """Open and check an image. ``write`` takes the exclusive lock, ``shared_lock`` a shared one.
        An image whose newest metadata is lost (both copies damaged: :attr:`damage`) is refused, in
        one line that says it rolled back and what to do, unless ``damaged`` (the checks: fsck,
        info)."""
        path = Path(path)
        stack = ExitStack()
        fd = open_regular(path, os.O_RDWR if write else os.O_RDONLY, fmt.WHAT)
        stack.callback(os.close, fd)
        try:
            if write or shared_lock:
                stack.enter_context(locked(fd, path, fmt.WHAT, shared=not write, wait=wait, on_wait=on_wait))
            opened = read_volume(lambda n, off: os.pread(fd, n, off), path, os.fstat(fd).st_size)
            if opened.damage and not damaged:
                repair = f"vhw hdd fsck --repair {path}"
                raise rolled_back(path, opened.damage, opened.state.sb.generation, repair=repair)
        except BaseException:
            stack.close()
            raise
        return cls(path, fd, opened, stack)

    @property
    def hdd_id(self) -> Id:
        return self.volume.sb.hdd_id

    @property
    def secret(self) -> bytes:
        """The HDD's secret (its X25519 private key): for the console's key ladder, never shown."""
        return self.volume.sb.secret

    @property
    def public_key(self) -> bytes:
        return crypto.device_public(self.volume.sb.secret)

    # -- writing ------------------------------------------------------------------------------

    def apply(self, ops: Iterable[Op], volume: Volume) -> None:
        """Apply a finished plan and adopt the volume it leads to."""
        self._write(lambda: apply_ops(self._fd, ops))
        self.volume = volume

    def run(self, plan: Plan) -> Volume:
        """Apply a streaming plan (a generator of ops that returns the resulting volume)."""

        def go() -> Volume:
            run = (0, 0)  # the contiguous large writes not yet hinted: [start, end)
            while True:
                try:
                    op = next(plan)
                except StopIteration as stop:
                    done: Volume = stop.value
                    return done
                apply_op(self._fd, op)
                if not isinstance(op, Write) or len(op.data) < WRITEBACK_HINT:
                    continue
                end = op.offset + len(op.data)
                run = (run[0], end) if op.offset == run[1] else (op.offset, end)
                if run[1] - run[0] >= WRITEBACK_RUN:
                    os.posix_fadvise(self._fd, run[0], run[1] - run[0], os.POSIX_FADV_DONTNEED)
                    run = (end, end)

        self.volume = self._write(go)
        return self.volume

    # -- reading ------------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        return self._fd

    def read_stream(self, f: fmt.HddFile, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of ``f``'s sealed stream (its blocks, then their tags)."""
        out = bytearray()
        for ext in f.pieces(offset, length):
            data = os.pread(self._fd, ext.length, ext.offset)
            if len(data) != ext.length:
                raise ImageError(self.path, f"truncated {fmt.WHAT}")
            out += data
        return bytes(out)

    def read_sealed(self, f: fmt.HddFile, index: int) -> bytes:
        """Block ``index`` of ``f`` as :meth:`vhw.crypto.BlockCipher.open` takes it: its ciphertext,
        then its tag."""
        layout = f.layout
        data = self.read_stream(f, layout.sealed_offset(index), layout.sealed_length(index))
        return data + self.read_stream(f, layout.tag_offset(index), crypto.TAG_SIZE)

    def iter_pieces(self, f: fmt.HddFile) -> Generator[tuple[range, bytes, bytes], None, None]:
        """(blocks, their ciphertext, their tags) for every piece of ``f`` (stores.hdd.PIECE_SIZE bytes of
        plaintext), in order."""
        layout = f.layout
        for piece in range(piece_count(f)):
            blocks = piece_blocks(f, piece)
            start = layout.sealed_offset(blocks.start)
            end = layout.sealed_offset(blocks.stop - 1) + layout.sealed_length(blocks.stop - 1)
            data = self.read_stream(f, start, end - start)
            yield blocks, data, self.read_stream(f, layout.tag_offset(blocks.start), len(blocks) * crypto.TAG_SIZE)

    def decrypt(self, title: fmt.Title, f: fmt.HddFile, title_key: bytes) -> Generator[bytes, None, None]:
        """The plaintext of ``f``, block by block; a damaged block raises IntegrityError."""
        cipher = f.cipher(title_key)
        size, tag = f.block_size, crypto.TAG_SIZE
        for blocks, data, tags in self.iter_pieces(f):
            for k, i in enumerate(blocks):
                ciphertext = data[k * size : k * size + cipher.layout.plain_length(i)]
                try:
                    yield cipher.open_block(i, ciphertext, tags[k * tag : (k + 1) * tag])
                except crypto.Invalid:
                    raise IntegrityError(self.path, f"{title.title_id}/{f.path}: block {i} does not decrypt") from None

    # -- checking -----------------------------------------------------------------------------

    def check(self, *, deep: bool = False, progress: Callable[[int], None] | None = None) -> list[str]:
        """fsck: every inconsistency found, as one line each; empty when the image is clean.

        A damaged superblock slot is not one of them but a note (:attr:`notes`): it is what an
        interrupted commit leaves, the previous generation is whole and in use, and the next
        commit (or ``repair``) rewrites the slot. ``deep`` also reads every complete title and compares
        it with the SHA-256 the catalog
        recorded when its install finished (no key needed).
        """
        problems = self.damage + [str(p) for p in self.volume.problems()]
        memory = self.volume.sb.memory
        if memory is not None:
            with CardImage.open_region(
                self.path, memory.offset, memory.length, what=f"{self.path} (internal memory)", damaged=True
            ) as region:
                problems += [f"internal memory: {p}" for p in region.check()]
        if deep and not problems:
            for t in self.volume.catalog.titles:
                if not t.complete:
                    continue
                for f in t.files:
                    pieces = []
                    for _, data, tags in self.iter_pieces(f):
                        pieces.append(piece_checksum(data, tags))
                        if progress:
                            progress(len(data))  # (plaintext bytes: the ciphertext is as long)
                    if piece_digest(pieces) != f.sealed_digest:
                        problems.append(f"title {t.title_id}, file {f.path!r}: data damaged")
        return problems

    def repair(self) -> list[str]:
        """Drop only what nothing reaches; never touch a complete title. Returns what was done.

        * incomplete installs whose records are inconsistent are dropped (complete titles stay);
        * a new commit rewrites the older superblock slot when it is damaged, and makes the
          generation in use current when the image rolled back (what was newer is lost);
        * the internal memory, if any, the same way (:meth:`CardImage.repair`);
        * free space is handed back to the host file system (hole punching), wiping stale data.
        """
        done = []
        if self.damage:
            done.append(f"accepted generation {self.volume.sb.generation} (what was newer is lost)")
        if self.volume.sb.memory is not None:
            memory = self.volume.sb.memory
            with CardImage.open_region(
                self.path, memory.offset, memory.length, what=f"{self.path} (internal memory)", write=True, damaged=True
            ) as region:
                done += [f"internal memory: {line}" for line in region.repair()]
        vol = self.volume
        broken = {p.title_id for p in vol.problems()}
        dropped = [t for t in vol.catalog.titles if not t.complete and t.title_id in broken]
        if dropped or self.notes or self.damage:
            titles = tuple(t for t in vol.catalog.titles if t not in dropped)
            self.apply(*commit_twice(vol, replace(vol.catalog, titles=titles)))  # both slots, every copy, anew
            done += [f"dropped the interrupted, inconsistent install of {t.title_id}" for t in dropped]
            if self.notes or self.damage:
                done.append("rewrote the superblocks as a new generation")
            self.notes, self.damage = [], []
        freed = 0
        for hole in self.volume.free():
            if punch_hole(self._fd, hole.offset, hole.length):
                freed += hole.length
        if freed:
            done.append("released unused space to the host file system")
        os.fsync(self._fd)
        return done


_libc = ctypes.CDLL(None, use_errno=True)  # (the C library is in the process: no `ldconfig -p` at start-up)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range of a sparse file (it reads as zeros afterwards). False if unsupported."""
    rc = _libc.fallocate(
        ctypes.c_int(fd),
        ctypes.c_int(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
        ctypes.c_long(offset),
        ctypes.c_long(length),
    )
    return bool(rc == 0)
