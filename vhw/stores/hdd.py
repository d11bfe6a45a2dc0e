"""The HDD's store without I/O: allocation, commits as plans, structural checks.

Every change to an HDD image is a *plan*: an ordered list of :class:`Write` and :class:`Sync`
operations, computed from the current :class:`Volume` (superblock + catalog) alone. The device
layer applies a plan with a tiny executor (``pwrite`` / ``fsync``); crash tests apply every prefix
of a plan, tear the last write, and check that the image still opens and is consistent.

A commit is always::

    [data writes ...]  Sync   (the data a new catalog points to is durable first)
    Write(new catalog into free space)  Write(its ditto copy elsewhere)  Sync
    Write(next superblock into the *older* slot, copy A)  Sync
    Write(the same superblock into that slot's copy B)  Sync

(the sync between the two copies of a slot makes sure a crash never spoils both:
:mod:`vhw.stores.ditto` tells a crash from damage by that)

The new catalog never lands on anything the current *or* the new catalog references, so a crash
at any point leaves the current generation whole. Space a commit frees is allocatable only in
later commits, when the freeing commit is already durable.

Data extents start on 4 KiB pages and hold whole blocks (all but a file's last extent), so each
block is in one place and a block never straddles extents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import crc32c

from .. import crypto
from ..errors import NoSpaceError
from ..formats import hdd as fmt
from ..formats.common import BLOCK_SIZE, Extent, valid_relpath, valid_title_id
from ..formats.hdd import DATA_START, OWNER_SIZE, Catalog, HddFile, Superblock, Title, TitleState
from ..plans import Op
from .ditto import Layout, catalog_fields, commit_ops, commit_twice

__all__ = [
    "LAYOUT",
    "PIECE_SIZE",
    "FileSpec",
    "Volume",
    "format_plan",
    "piece_blocks",
    "piece_checksum",
    "piece_count",
    "piece_digest",
]


#: 1 MiB of a file's plaintext: what an install re-seals, checks and writes at once (16 of a disc's
#: chunks, 256 of an HDD's 4 KiB blocks), and what `fsck --deep` checks at once.
PIECE_SIZE = 1024 * 1024


def piece_checksum(data: bytes | bytearray | memoryview, tags: bytes | bytearray | memoryview = b"") -> bytes:
    """The checksum of one piece of a file's sealed stream, its blocks' ciphertext then their tags:
    CRC-32C (Castagnoli), which the CPU computes (SSE 4.2). It is there for `fsck --deep` to find
    damage without a key; what resists a deliberate change is each block's GCM tag. (SHA-256, at
    1.2 GB/s here, cost the install more CPU than both AES-GCM passes together; zlib's CRC-32 (HDD
    format 3) 2.2 GB/s per core, half a second of CPU per GiB installed; CRC-32C 19 GB/s.)"""
    return crc32c.crc32c(tags, crc32c.crc32c(data)).to_bytes(4, "big")


def piece_digest(piece_checksums: list[bytes]) -> bytes:
    """The digest the catalog keeps of a file's sealed bytes: the SHA-256 of the checksums of its
    pieces (PIECE_SIZE bytes of plaintext each), in order. Pieces are checked apart, so an install
    computes them in parallel."""
    return hashlib.sha256(b"".join(piece_checksums)).digest()


def piece_blocks(f: HddFile, piece: int) -> range:
    """The blocks of ``f`` that piece ``piece`` of it holds (an empty file: one piece, one block)."""
    per = PIECE_SIZE // f.block_size
    return range(piece * per, min((piece + 1) * per, f.layout.count))


def piece_count(f: HddFile) -> int:
    return max(1, -(-f.size // PIECE_SIZE))


def _align_up(n: int) -> int:
    return -(-n // BLOCK_SIZE) * BLOCK_SIZE


def _merge(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in sorted(x for x in extents if x.length > 0):
        if out and e.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, e.end) - last.offset)
        else:
            out.append(e)
    return out


def holes(used: list[Extent], size: int) -> list[Extent]:
    """The complement of ``used`` in the data area [DATA_START, size)."""
    out, pos = [], DATA_START
    for e in _merge(used):
        if e.offset > pos:
            out.append(Extent(pos, min(e.offset, size) - pos))
        pos = max(pos, e.end)
    if pos < size:
        out.append(Extent(pos, size - pos))
    return [h for h in out if h.length > 0]


def _take(free: list[Extent], sealed_size: int, unit: int) -> tuple[Extent, ...] | None:
    """First-fit extents for one file's sealed stream, each but the last a whole number of ``unit``
    (its blocks); consumes them from ``free``."""
    remaining = sealed_size
    got: list[Extent] = []
    i = 0
    while remaining and i < len(free):
        hole = free[i]
        start = _align_up(hole.offset)
        avail = hole.end - start
        if remaining <= avail:
            take = remaining
        else:
            take = (max(avail, 0) // unit) * unit
        if take <= 0:
            i += 1
            continue
        got.append(Extent(start, take))
        remaining -= take
        rest = Extent(_align_up(start + take), hole.end - _align_up(start + take))
        if rest.length > 0:
            free[i] = rest
        else:
            del free[i]
    return tuple(got) if remaining == 0 else None


def _take_last(free: list[Extent], length: int) -> Extent | None:
    """Last-fit room for a catalog: from the end of the disk, away from title data."""
    for hole in reversed(free):
        start = (hole.end - length) // BLOCK_SIZE * BLOCK_SIZE
        if start >= hole.offset:
            return Extent(start, length)
    return None


@dataclass(frozen=True)
class Problem:
    """One inconsistency fsck found; ``title_id`` names the title it belongs to, if any."""

    text: str
    title_id: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class FileSpec:
    """A file to install: what the disc's manifest says about it."""

    path: str
    size: int
    stream_id: bytes
    executable: bool = False


@dataclass(frozen=True)
class Volume:
    """An HDD image's current state: its superblock and catalog."""

    sb: Superblock
    catalog: Catalog

    # -- space --------------------------------------------------------------------------------

    def used(self, *catalogs: Catalog) -> list[Extent]:
        """Everything the current catalog (and any of ``catalogs``) references, plus itself and
        the internal memory."""
        out = [Extent(0, DATA_START), *self.sb.catalog_copies]
        if self.sb.memory:
            out.append(self.sb.memory)
        for cat in (self.catalog, *catalogs):
            for t in cat.titles:
                for f in t.files:
                    out.extend(f.extents)
        return out

    def free(self) -> list[Extent]:
        return holes(self.used(), self.sb.nominal_size)

    @property
    def free_bytes(self) -> int:
        return sum(h.length for h in self.free())

    # -- commits ------------------------------------------------------------------------------

    def commit(self, catalog: Catalog) -> tuple[list[Op], Volume]:
        """Plan making ``catalog`` the next generation."""
        generation = self.sb.generation + 1
        catalog = replace(catalog, generation=generation)
        data = fmt.encode_catalog(catalog)
        free = holes(self.used(catalog), self.sb.nominal_size)
        room = _take_last(free, len(data))
        ditto = _take_last(holes(self.used(catalog) + ([room] if room else []), self.sb.nominal_size), len(data))
        if room is None or ditto is None:
            raise NoSpaceError("the HDD is full: no room left even for its catalog")
        fields = catalog_fields(data)
        sb = replace(self.sb, generation=generation, catalog_offset=room.offset, catalog_ditto=ditto.offset, **fields)
        ops = commit_ops([room.offset, ditto.offset], data, sb.slot, fmt.encode_superblock(sb))
        return ops, Volume(sb, catalog)

    def reserve(self, title: Title, files: list[FileSpec]) -> tuple[list[Op], Volume]:
        """Plan adding ``title`` as INSTALLING with room for all of ``files``, or refuse if full."""
        free = self.free()
        placed = []
        block = self.sb.block_size
        need = sum(crypto.BlockLayout(f.size, block).sealed_size for f in files)
        for spec in files:
            extents = _take(free, crypto.BlockLayout(spec.size, block).sealed_size, block)
            if extents is None:
                raise NoSpaceError(
                    f"not enough space on the HDD for {title.title_id}: it needs {_mb(need)},"
                    f" {_mb(self.free_bytes)} are free",
                    hint="remove a title with `vhw hdd rm`, or use a larger HDD",
                )
            placed.append(HddFile(spec.path, spec.size, spec.stream_id, extents, spec.executable, block_size=block))
        title = replace(title, files=tuple(placed), state=TitleState.INSTALLING, progress=0)
        others = tuple(t for t in self.catalog.titles if t.title_id != title.title_id)
        return self.commit(replace(self.catalog, titles=others + (title,)))

    def _with_title(self, title: Title) -> Catalog:
        return replace(
            self.catalog,
            titles=tuple(title if t.title_id == title.title_id else t for t in self.catalog.titles),
        )

    def checkpoint(self, title_id: str, progress: int) -> tuple[list[Op], Volume]:
        """Plan recording that ``progress`` bytes (plaintext, over the files in order) of an install
        are durable."""
        title = self._require(title_id)
        return self.commit(self._with_title(replace(title, progress=progress)))

    def complete(self, title_id: str, digests: list[bytes], *, installed: int) -> tuple[list[Op], Volume]:
        title = self._require(title_id)
        files = tuple(replace(f, sealed_digest=d) for f, d in zip(title.files, digests, strict=True))
        done = replace(title, files=files, state=TitleState.COMPLETE, progress=title.size, installed=installed)
        return self.commit(self._with_title(done))

    def remove(self, title_id: str) -> tuple[list[Op], Volume]:
        self._require(title_id)
        titles = tuple(t for t in self.catalog.titles if t.title_id != title_id)
        return self.commit(replace(self.catalog, titles=titles))

    def with_card_epoch(self, owner: bytes, epoch: int) -> tuple[list[Op], Volume]:
        """Plan remembering that ``owner``'s cards are at ``epoch`` now (older ones are refused)."""
        epochs = self.catalog.epochs()
        epochs[owner] = max(epoch, epochs.get(owner, 0))
        return self.commit(replace(self.catalog, card_epochs=tuple(sorted(epochs.items()))))

    def _require(self, title_id: str) -> Title:
        title = self.catalog.title(title_id)
        if title is None:
            raise KeyError(title_id)
        return title

    # -- checks -------------------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Structural inconsistencies of the catalog (fsck's first pass); empty when sound."""
        out: list[Problem] = []
        size = self.sb.nominal_size
        owned: list[tuple[Extent, str, str | None]] = [(e, "the catalog", None) for e in self.sb.catalog_copies]
        if self.sb.memory:
            owned.append((self.sb.memory, "the internal memory", None))
        seen_titles: set[str] = set()
        for t in self.catalog.titles:
            name = f"title {t.title_id}"
            if not valid_title_id(t.title_id) or t.title_id in seen_titles:
                out.append(Problem(f"{name}: invalid or duplicate title ID", t.title_id))
            seen_titles.add(t.title_id)
            if len(t.key_salt) != 32 or len(t.owner) != OWNER_SIZE or len(t.bound_to) != OWNER_SIZE:
                out.append(Problem(f"{name}: key record malformed", t.title_id))
            if not 0 <= t.progress <= t.size:
                out.append(Problem(f"{name}: progress beyond its data", t.title_id))
            if t.complete and t.progress != t.size:
                out.append(Problem(f"{name}: complete but not all data written", t.title_id))
            paths: set[str] = set()
            for f in t.files:
                fname = f"{name}, file {f.path!r}"
                if not valid_relpath(f.path) or f.path in paths:
                    out.append(Problem(f"{fname}: invalid or duplicate path", t.title_id))
                paths.add(f.path)
                total = sum(e.length for e in f.extents)
                if total != f.layout.sealed_size:
                    out.append(
                        Problem(f"{fname}: extents hold {total} bytes, file needs {f.layout.sealed_size}", t.title_id)
                    )
                for e in f.extents[:-1]:
                    if e.length % f.block_size:
                        out.append(Problem(f"{fname}: an extent splits a block", t.title_id))
                for e in f.extents:
                    if e.offset < DATA_START or e.end > size or e.length <= 0 or e.offset % BLOCK_SIZE:
                        out.append(Problem(f"{fname}: extent {e.offset}+{e.length} out of the data area", t.title_id))
                    owned.append((e, fname, t.title_id))
            if t.entry and t.entry not in paths:
                out.append(Problem(f"{name}: entry point {t.entry!r} is not one of its files", t.title_id))
        owned.sort(key=lambda x: x[0].offset)
        for (a, an, _), (b, bn, bt) in zip(owned, owned[1:], strict=False):
            if b.offset < a.end:
                out.append(Problem(f"{bn} overlaps {an}", bt))
        return out


def format_plan(sb: Superblock) -> tuple[list[Op], Volume]:
    """Plan a new, empty HDD: an empty catalog committed twice, so both slots start out valid.
    (The internal memory's region, when ``sb`` names one, is formatted as a card of its own.)"""
    return commit_twice(Volume(replace(sb, catalog_offset=0, catalog_length=0), Catalog()), Catalog())


LAYOUT: Layout[Superblock, Catalog, Volume] = Layout(
    format=fmt,
    state=Volume,
    lost_hint="a title installed or removed since may be missing or show as interrupted:"
    " install it again from its disc with `vhw console install`",
)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
