"""The copy itself (S24–S26): decrypt a disc's chunks and re-encrypt them onto the HDD, as a plan.

:func:`install_plan` is a generator of HDD operations (:mod:`vhw.volume`) that returns the final
volume. It reads the disc but never touches the HDD image: the caller's executor applies what it
yields, so the same plan runs for real, or is collected by tests that replay every prefix of it.

The plan is::

    reserve   commit the title as INSTALLING with all its extents allocated (or refuse: HDD full)
    copy      Write(sealed chunks, batched up to 1 MiB per contiguous run)
              every CHECKPOINT bytes: Sync, commit(progress)   <- where a killed install resumes
    finish    Sync, commit(COMPLETE with the SHA-256 of each file's sealed bytes)

Each title gets its own key, derived from the user's :class:`~vhw.bindings.TitleBinding` (the
Content-Gen-Key with this console's and this HDD's secrets), the title ID and a random salt kept
in the catalog; a fresh stream ID per file. Sealing is deterministic for a given
key, stream and chunk, so resuming rewrites chunks identically and recomputes the digests of what
was written before the interruption without reading the HDD.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Generator

from . import crypto
from .bindings import TitleBinding
from .devices.disc import DiscImage
from .errors import IntegrityError, StateError
from .formats.hdd import Title, TitleState
from .ids import Id
from .plans import SYNC, Op, Write
from .volume import SEALED_CHUNK, FileSpec, Volume

CHECKPOINT = 64 * 1024 * 1024  # sealed bytes between progress commits: at most this is redone
WRITE_BATCH = 1024 * 1024  # bytes per write: few syscalls, bounded memory


def resumable(title: Title, disc: DiscImage, binding: TitleBinding) -> bool:
    """Whether an interrupted install of ``title`` can continue from this disc and binding."""
    return (
        not title.complete
        and crypto.equal(title.bound_to, binding.owner)
        and title.title_digest == disc.disc.title_digest
        and [(f.path, f.size) for f in title.files] == [(f.path, f.size) for f in disc.manifest.files]
    )


def _fresh_title(disc: DiscImage, owner: bytes, binding: TitleBinding | None,
                 mid: Id | None = None) -> tuple[Title, list[FileSpec]]:
    m = disc.manifest
    title = Title(
        title_id=m.title_id,
        name=m.name,
        kind=m.kind,
        entry=m.entry,
        files=(),
        key_salt=os.urandom(32),
        owner=owner,
        bound_to=binding.owner if binding else bytes(16),
        mid=mid or disc.disc.mid,  # a bought license's MID for a disc without one
        title_digest=disc.disc.title_digest,
        metadata=json.dumps(m.metadata, sort_keys=True).encode(),
    )
    specs = [FileSpec(f.path, f.size, os.urandom(crypto.STREAM_ID_SIZE), f.executable) for f in m.files]
    return title, specs


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
) -> Generator[Op, None, Volume]:
    """Install the title on ``disc`` onto ``vol`` for the user ``owner`` (``bindings.owner_of``),
    bound under ``binding``, resuming an interrupted install of it.

    A complete copy of the title that the same user installed under another binding (before a
    repair exchanged the console or the HDD's key changed with it) no longer decrypts: it is
    replaced, its space freed by the commit that adds the new copy. Another user's copy is not.
    """
    m = disc.manifest
    existing = vol.catalog.title(m.title_id)
    if existing is not None and existing.complete:
        if not crypto.equal(existing.owner, owner):
            raise StateError(f"{m.title_id} is installed on this HDD by another user",
                             hint="an HDD holds one copy of a title; that user may remove it with `vhw hdd rm`")
        if crypto.equal(existing.bound_to, binding.owner):
            raise StateError(f"{m.title_id} is already installed on this HDD")
    if existing is None or not resumable(existing, disc, binding):
        fresh, specs = _fresh_title(disc, owner, binding, mid)
        ops, vol = vol.reserve(fresh, specs)  # refuses before anything is written if the HDD is full
        yield from ops
    title = vol.catalog.title(m.title_id)
    assert title is not None and title.state is TitleState.INSTALLING
    key = binding.title_key(title.title_id, title.key_salt)

    plain = bytearray(crypto.CHUNK_SIZE)
    sealed = bytearray(SEALED_CHUNK)
    digests: list[bytes] = []
    done = 0  # sealed bytes of this title durable or about to be
    last_checkpoint = title.progress
    batch = bytearray()
    batch_at = -1

    for disc_file, hdd_file in zip(m.files, title.files, strict=True):
        reader = crypto.ChunkCipher(content_key, disc_file.stream_id, disc_file.size)
        writer = crypto.ChunkCipher(key, hdd_file.stream_id, hdd_file.size)
        layout = hdd_file.layout
        digest = hashlib.sha256()
        for i, chunk in disc.iter_sealed(disc_file):
            try:
                n = reader.open_into(i, chunk, plain)
            except crypto.Invalid:
                raise IntegrityError(disc.path, f"{disc_file.path}: chunk {i} does not decrypt (damaged disc)") from None
            s = writer.seal_into(i, memoryview(plain)[:n], sealed)
            digest.update(memoryview(sealed)[:s])
            where = hdd_file.locate(layout.sealed_offset(i))
            if done >= title.progress:  # not yet durable: write it
                if batch and (where != batch_at + len(batch) or len(batch) + s > WRITE_BATCH):
                    yield Write(batch_at, bytes(batch))
                    batch.clear()
                if not batch:
                    batch_at = where
                batch += memoryview(sealed)[:s]
            done += s
            if progress:
                progress(n)
            if done - last_checkpoint >= checkpoint and done > title.progress:
                if batch:
                    yield Write(batch_at, bytes(batch))
                    batch.clear()
                yield SYNC
                ops, vol = vol.checkpoint(title.title_id, done)
                yield from ops
                last_checkpoint = done
        digests.append(digest.digest())
    if batch:
        yield Write(batch_at, bytes(batch))
    yield SYNC
    ops, vol = vol.complete(title.title_id, digests, installed=installed)
    yield from ops
    return vol


def read_title(image, title: Title, binding: TitleBinding) -> dict[str, bytes]:
    """Every file of an installed title, decrypted (for tests and small titles)."""
    key = binding.title_key(title.title_id, title.key_salt)
    return {f.path: b"".join(image.decrypt(title, f, key)) for f in title.files}
