"""The copy itself (S24–S26): decrypt a disc's chunks and re-encrypt them onto the HDD, as a plan.

:func:`install_plan` is a generator of HDD operations (:mod:`vhw.stores.hdd`) that returns the final
volume. It reads the disc but never touches the HDD image: the caller's executor applies what it
yields, so the same plan runs for real, or is collected by tests that replay every prefix of it.

The plan is::

    reserve   commit the title as INSTALLING with all its extents allocated (or refuse: HDD full)
    copy      Write(a piece's blocks: 1 MiB of ciphertext), Write(their tags), per piece
              after gaps of 4, 8, 16, 32 MiB, then every CHECKPOINT bytes:
                        Sync, commit(progress)   <- where a killed install resumes
    finish    Sync, commit(COMPLETE with the SHA-256 of each file's sealed bytes)

Each title gets its own key, derived from the user's :class:`~vhw.bindings.TitleBinding` (the
Content-Gen-Key with this console's and this HDD's secrets), the title ID and a random salt kept
in the catalog; a fresh stream ID per file. Sealing is deterministic for a given
key, stream and block, so resuming rewrites blocks identically and recomputes the digests of what
was written before the interruption without reading the HDD. The compiled core
(:func:`vhw.datapath.reseal`) opens the disc's chunks and seals the HDD's blocks; this module plans,
orders and commits.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import crypto, datapath
from ..bindings import TitleBinding, title_tag
from ..devices.disc import DiscImage
from ..devices.hdd import HddImage
from ..errors import IntegrityError, StateError
from ..formats.disc import DiscFile
from ..formats.hdd import HddFile, Title, TitleState
from ..ids import Id
from ..plans import SYNC, Op, Write
from ..stores.hdd import PIECE_SIZE, FileSpec, Volume, piece_blocks, piece_checksum, piece_count, piece_digest

CHECKPOINT = 64 * 1024 * 1024  # bytes between progress commits: at most this is redone
# the first progress commit comes early, and the gaps double up to CHECKPOINT: an install killed in
# its first seconds resumes from what it wrote too, while a large one pays for few commits
FIRST_CHECKPOINT = 4 * 1024 * 1024
DEPTH = 6  # pieces in flight ahead of the writer: bounded memory (2 x 6 MiB of buffers)
WORKERS = 2  # threads sealing pieces (the machine has two cores; the writer shares them)
PIECE_CHUNKS = PIECE_SIZE // crypto.CHUNK_SIZE  # a disc's chunks per piece
_PIECE_TAGS = PIECE_SIZE // min(crypto.HDD_BLOCK_SIZES) * crypto.TAG_SIZE  # the most tags a piece has
_PIECE_SEALED = PIECE_CHUNKS * (crypto.CHUNK_SIZE + crypto.TAG_SIZE)  # a piece as the disc holds it


def resumable(title: Title, disc: DiscImage, binding: TitleBinding) -> bool:
    """Whether an interrupted install of ``title`` can continue from this disc and binding."""
    return (
        not title.complete
        and crypto.equal(title.bound_to, binding.owner)
        and title.title_digest == disc.disc.title_digest
        and [(f.path, f.size) for f in title.files] == [(f.path, f.size) for f in disc.manifest.files]
    )


def _fresh_title(
    disc: DiscImage, owner: bytes, binding: TitleBinding | None, mid: Id | None = None
) -> tuple[Title, list[FileSpec]]:
    m = disc.manifest
    salt = os.urandom(32)
    metadata = json.dumps(m.metadata, sort_keys=True).encode()
    tag = bytes(32)
    if binding is not None:
        tag = title_tag(
            binding.title_key(m.title_id, salt), m.title_id, m.entry, m.kind, disc.disc.title_digest, metadata
        )
    title = Title(
        title_id=m.title_id,
        name=m.name,
        kind=m.kind,
        entry=m.entry,
        entry_tag=tag,
        files=(),
        key_salt=salt,
        owner=owner,
        bound_to=binding.owner if binding else bytes(16),
        mid=mid or disc.disc.mid,  # a bought license's MID for a disc without one
        title_digest=disc.disc.title_digest,
        metadata=metadata,
    )
    specs = [FileSpec(f.path, f.size, os.urandom(crypto.STREAM_ID_SIZE), f.executable) for f in m.files]
    return title, specs


def host_space_needed(disc: DiscImage, block_size: int, durable: int = 0) -> int:
    """Bytes an install of ``disc`` may still add to the HDD image on the host's disk (the image is
    sparse: each block written takes room there), when ``durable`` bytes of it are written already."""
    sealed = sum(crypto.BlockLayout(f.size, block_size).sealed_size for f in disc.manifest.files)
    return max(0, sealed - durable) + 2 * 1024 * 1024  # (and the catalogs' copies)


def check_space(vol: Volume, disc: DiscImage) -> None:
    """Raise NoSpaceError if the title on ``disc`` would not fit (the reservation, computed and
    thrown away: exact, and nothing is written)."""
    title, specs = _fresh_title(disc, bytes(16), None)
    vol.reserve(title, specs)


def install_plan(
    vol: Volume,
    disc: DiscImage,
    *,
    content_key: bytes,
    owner: bytes,
    binding: TitleBinding,
    installed: int,
    progress: Callable[[int], None] | None = None,
    checkpoint: int = CHECKPOINT,
    mid: Id | None = None,
    reuse: bool = False,
) -> Generator[Op, None, Volume]:
    """Install the title on ``disc`` onto ``vol`` for the user ``owner`` (``bindings.owner_of``),
    bound under ``binding``, resuming an interrupted install of it.

    A complete copy of the title that the same user installed under another binding (before a
    repair exchanged the console or the HDD's key changed with it) no longer decrypts: it is
    replaced, its space freed by the commit that adds the new copy. Another user's copy is not.

    ``reuse``: the caller applies each write before asking for the next op, so its buffer may be
    filled again (``HddImage.run``); a plan that is collected first must not say so.
    """
    m = disc.manifest
    existing = vol.catalog.title(m.title_id)
    _refuse_a_second_copy(existing, owner, binding)
    if existing is None or not resumable(existing, disc, binding):
        fresh, specs = _fresh_title(disc, owner, binding, mid)
        ops, vol = vol.reserve(fresh, specs)  # refuses before anything is written if the HDD is full
        yield from ops
    title = vol.catalog.title(m.title_id)
    assert title is not None and title.state is TitleState.INSTALLING
    key = binding.title_key(title.title_id, title.key_salt)
    sealer = _Sealer(disc, content_key, key, reuse=reuse)
    try:
        vol, digests = yield from _write(vol, title, sealer, m.files, progress, checkpoint)
    finally:
        sealer.close()
    yield SYNC
    ops, vol = vol.complete(title.title_id, digests, installed=installed)
    yield from ops
    return vol


def _refuse_a_second_copy(existing: Title | None, owner: bytes, binding: TitleBinding) -> None:
    if existing is None or not existing.complete:
        return
    if not crypto.equal(existing.owner, owner):
        raise StateError(
            f"{existing.title_id} is installed on this HDD by another user",
            hint="an HDD holds one copy of a title; that user may remove it with `vhw hdd rm`",
        )
    if crypto.equal(existing.bound_to, binding.owner):
        raise StateError(f"{existing.title_id} is already installed on this HDD")


def _write(
    vol: Volume,
    title: Title,
    sealer: _Sealer,
    disc_files: tuple[DiscFile, ...],
    progress: Callable[[int], None] | None,
    checkpoint: int,
) -> Generator[Op, None, tuple[Volume, list[bytes]]]:
    """Write every piece of the title not durable yet, with a checkpoint of the progress every so
    often (the first soon, then twice as far apart, up to ``checkpoint``); the volume and each
    file's digest."""
    digests: list[bytes] = []
    done = 0  # plaintext bytes of this title written (or durable before) so far
    last_checkpoint = title.progress
    gap = min(FIRST_CHECKPOINT, checkpoint)
    for disc_file, hdd_file in zip(disc_files, title.files, strict=True):
        pieces = []
        for piece in sealer.pieces(disc_file, hdd_file):  # in order, sealed ahead by the workers
            pieces.append(piece.digest)
            end = done + piece.plain_size
            # not all durable yet: write it (a durable block again: the same bytes; an empty
            # file's piece, all tag and no plaintext, ends where the one before it did)
            if end >= title.progress:
                yield from piece.writes()
                if progress:  # (what was durable before is not counted again: a resumed bar starts there)
                    progress(piece.plain_size)
            done = end
            if done - last_checkpoint >= gap and done > title.progress:
                yield SYNC
                ops, vol = vol.checkpoint(title.title_id, done)
                yield from ops
                last_checkpoint = done
                gap = min(2 * gap, checkpoint)
            sealer.recycle(piece)
        digests.append(piece_digest(pieces))
    return vol, digests


@dataclass
class Piece:
    """Piece ``index`` of one file (PIECE_SIZE bytes of its plaintext), re-sealed: its blocks'
    ciphertext and their tags, and where they go."""

    hdd_file: HddFile
    index: int
    data: memoryview
    tags: memoryview
    digest: bytes  # its checksum (volume.piece_checksum)
    plain_size: int
    buffers: tuple[bytearray, bytearray] | None = None  # to give back to the sealer once written

    def writes(self) -> Iterator[Write]:
        """Writes of the ciphertext and of the tags, one per extent of the file they fall in."""
        layout = self.hdd_file.layout
        first = piece_blocks(self.hdd_file, self.index).start
        for start, data in ((layout.sealed_offset(first), self.data), (layout.tag_offset(first), self.tags)):
            pos = 0
            for ext in self.hdd_file.pieces(start, len(data)):
                yield Write(ext.offset, data[pos : pos + ext.length])
                pos += ext.length


@dataclass(frozen=True)
class _FileJob:
    """One file to copy: where it is on the disc and on the HDD, and the stream secrets of each."""

    disc_file: DiscFile
    hdd_file: HddFile
    disc: crypto.StreamSecret = field(repr=False)
    hdd: crypto.StreamSecret = field(repr=False)


class _Sealer:
    """Opens a disc's chunks and seals them again as HDD blocks, a piece (1 MiB) at a time, in
    worker threads that call the compiled core (:func:`vhw.datapath.reseal`, without the
    interpreter's lock; the checksum releases it too), keeping DEPTH pieces ahead of the writer.

    One thread reads the disc, piece after piece in order, so that the kernel sees one
    sequential reader and reads ahead in large requests, as it does for `cp`. (Reads from the
    sealers themselves, two threads taking turns on one descriptor, looked random to it: 0.86 MiB
    per request; asked for with ``POSIX_FADV_WILLNEED``, 1 MiB: /sys/block/*/stat over installs.)

    Memory stays bounded whatever the title's size: DEPTH pieces in flight, each in buffers of
    its own. With ``reuse`` (the plan is applied as it is made, as ``HddImage.run`` does), written
    buffers come back to be filled again, so no page of a new buffer is faulted in per piece;
    without it (tests collecting a plan) every piece gets fresh buffers.
    """

    def __init__(self, disc: DiscImage, content_key: bytes, title_key: bytes, *, reuse: bool):
        self.disc = disc
        self.content_key = content_key
        self.title_key = title_key
        self.reuse = reuse
        self._free: list[tuple[bytearray, bytearray]] = []
        self._free_in: list[bytearray] = []  # buffers for pieces read from the disc
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="vhw-read")
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="vhw-seal")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.shutdown(wait=True, cancel_futures=True)

    def recycle(self, piece: Piece) -> None:
        if self.reuse and piece.buffers is not None:
            self._free.append(piece.buffers)

    def pieces(self, disc_file: DiscFile, hdd_file: HddFile) -> Iterator[Piece]:
        job = _FileJob(
            disc_file,
            hdd_file,
            crypto.ChunkCipher(self.content_key, disc_file.stream_id, disc_file.size).secret,
            hdd_file.cipher(self.title_key).secret,
        )
        starts = iter(range(piece_count(hdd_file)))
        pending: deque[Future[Piece]] = deque()
        for index in starts:
            pending.append(self._submit(job, index))
            if len(pending) >= DEPTH:
                break
        while pending:
            piece = pending.popleft().result()  # in order; a damaged disc raises here
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(self._submit(job, nxt))
            yield piece

    def _submit(self, job: _FileJob, index: int) -> Future[Piece]:
        buffers = self._free.pop() if self._free else (bytearray(PIECE_SIZE), bytearray(_PIECE_TAGS))
        sealed_in = self._free_in.pop() if self._free_in else bytearray(_PIECE_SEALED)
        # in order, one piece after another (a file's last piece: what exists of it)
        first = index * PIECE_CHUNKS
        read = self._reader.submit(self.disc.read_sealed_into, job.disc_file, first, PIECE_CHUNKS, sealed_in)
        return self._pool.submit(self._seal, job, index, read, sealed_in, buffers)

    def _seal(
        self, job: _FileJob, index: int, read: Future[int], sealed_in: bytearray, buffers: tuple[bytearray, bytearray]
    ) -> Piece:
        disc_file, hdd_file = job.disc_file, job.hdd_file
        n_in = read.result()  # a truncated disc raises here
        first = index * PIECE_CHUNKS
        try:
            n = datapath.reseal(
                job.disc,
                job.hdd,
                size=disc_file.size,
                block_size=hdd_file.block_size,
                first=first,
                count=min(PIECE_CHUNKS, disc_file.layout.count - first),
                sealed=memoryview(sealed_in)[:n_in],
                data=buffers[0],
                tags=buffers[1],
            )
        except datapath.DiscChunkInvalid as bad:
            raise IntegrityError(
                self.disc.path, f"{disc_file.path}: chunk {bad.index} does not decrypt (damaged disc)"
            ) from None
        self._free_in.append(sealed_in)
        data = memoryview(buffers[0])[:n]
        tags = memoryview(buffers[1])[: len(piece_blocks(hdd_file, index)) * crypto.TAG_SIZE]
        return Piece(hdd_file, index, data, tags, piece_checksum(data, tags), n, buffers)


def read_title(image: HddImage, title: Title, binding: TitleBinding) -> dict[str, bytes]:
    """Every file of an installed title, decrypted (for tests and small titles)."""
    key = binding.title_key(title.title_id, title.key_salt)
    return {f.path: b"".join(image.decrypt(title, f, key)) for f in title.files}
