"""The HDD image (the patent's HDD 2): a sparse single-file container of installed titles.

Layout::

    0        superblock slot 0, copy A   ) one 4 KiB block each, checksummed; the valid slot with
    4096     superblock slot 1, copy A   ) the higher generation is current (LMDB's two meta
    8192     superblock slot 0, copy B   ) pages); each slot is kept twice (ditto copies, as ZFS
    12288    superblock slot 1, copy B   ) and ext4 keep theirs): one bad byte loses nothing
    16384 .. extents                     title data and catalogs (each catalog twice), copy-on-write

A superblock names the HDD-ID, the HDD's secret (an X25519 private key made at manufacture,
never shown and never sent; its public key is registered with the server), the nominal size
(40 GB by default: the file is sparse and holds only what is written), a generation, and where the
current catalog's two copies lie, with their length and SHA-256. The catalog lists the titles: for each its
metadata, the salt of its per-title key, whose it is (``owner``: the fingerprint of the user's
Content-Gen-Key) and what it is bound to (``bound_to``: the fingerprint of the
:class:`~vhw.bindings.TitleBinding` of that user, console and HDD), its state (installing or
complete), how many bytes of it are durable (the resume point, counted in plaintext over its
files in order), a tag that authenticates its entry point, kind and title digest under the title's
own key (so the entry ``play`` runs is the one the disc named: a second user who edits the catalog
cannot point it elsewhere), and per file the stream ID, size, block size, extents and, once
complete, a digest of its sealed bytes (:func:`vhw.stores.hdd.piece_digest`).

Each file is kept in blocks (:class:`vhw.crypto.BlockLayout`): 4 KiB by default (the superblock's
``block_shift`` is the HDD's choice for new installs, ``vhw hdd format --block-size``; each file
records its own), every block's data page-aligned where a plain file would hold it, and the blocks'
GCM tags after them. A random read then reads and authenticates the block it asks for, and nothing
of its neighbours.

An HDD made ``--with-memory`` has an internal memory for card-less consoles: a whole memory card
image (:mod:`vhw.formats.card`, with its own superblocks, catalog and save area) in a fixed region
of the image that the superblock names (``memory_offset``, ``memory_length``). It is written with
the card's own crash-safe commits and never touched by the HDD's.

Version 2 added the HDD's secret, ``bound_to`` and the memory region; version 3 the ditto copies
of the superblocks and the catalog, and the entry tag; version 4 checksums the pieces of a file's
sealed bytes with CRC-32C instead of CRC-32 (:func:`vhw.stores.hdd.piece_checksum`), so its digest
differs; version 5 keeps files in blocks with their tags apart (4 KiB by default, 64 KiB chunks
with their tags inline before) and counts an install's progress in plaintext bytes. Older images
are refused with a line that says to format them again.

Nothing is ever overwritten in place except a superblock slot, and only the older one: a commit
writes the new catalog's two copies into free space, syncs, then writes the next generation into
the other slot's copy A, syncs, and its copy B, syncs (see :mod:`vhw.stores.hdd`). A torn superblock
write leaves the previous generation current, whose catalog and data are untouched; how the
current generation is chosen, and what is reported, is :mod:`vhw.stores.ditto`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import construct as cs

from .. import crypto
from ..errors import ImageError
from ..ids import Id, IdKind
from .common import BLOCK_SIZE, Blob, Extent, IdField, OptionalId, Text, build, from_record, record, seal_block
from .ditto import SLOT_OFFSETS, decode_catalog_record, decode_slot

__all__ = [
    "DATA_START",
    "MAGIC",
    "MIN_SIZE",
    "OWNER_SIZE",
    "VERSION",
    "WHAT",
    "Catalog",
    "HddFile",
    "Superblock",
    "Title",
    "TitleState",
    "decode_catalog",
    "decode_superblock",
    "encode_catalog",
    "encode_superblock",
]


MAGIC = b"VHWHDD\0\0"
CATALOG_MAGIC = b"VHWCATL\0"
VERSION = 5
WHAT = "HDD image"
DATA_START = 4 * BLOCK_SIZE
DEFAULT_SIZE = 40 * 10**9  # the patent's "for example 40 GB" hard disk
MIN_SIZE = 1024 * 1024  # below this nothing useful fits
OWNER_SIZE = 16


class TitleState(enum.IntEnum):
    INSTALLING = 1
    COMPLETE = 2


SuperblockHead = cs.Struct("magic" / cs.Const(MAGIC), "version" / cs.Int16ub)

SuperblockBody = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int16ub,
    "hdd_id" / IdField(IdKind.HDD),
    "secret" / cs.Bytes(crypto.DEVICE_SECRET_SIZE),  # X25519 private key: never shown, never sent
    "nominal_size" / cs.Int64ub,
    "formatted" / cs.Int64ub,
    "generation" / cs.Int64ub,
    "catalog_offset" / cs.Int64ub,
    "catalog_length" / cs.Int64ub,
    "catalog_sha256" / cs.Bytes(32),
    "catalog_ditto" / cs.Int64ub,  # where the catalog's second copy lies
    "memory_offset" / cs.Int64ub,  # the internal memory (a card image), or 0
    "memory_length" / cs.Int64ub,
    "block_shift" / cs.Int8ub,  # log2 of the block size new installs use
)

ExtentRecord = cs.Struct("offset" / cs.Int64ub, "length" / cs.Int64ub)

FileRecord = cs.Struct(
    "path" / Text(cs.Int16ub),
    "size" / cs.Int64ub,
    "executable" / cs.Flag,
    "stream_id" / cs.Bytes(crypto.STREAM_ID_SIZE),
    "block_shift" / cs.Int8ub,  # log2 of its block size
    "sealed_digest" / cs.Bytes(32),  # of its sealed bytes (stores.hdd.piece_digest); zeros until complete
    "extents" / cs.PrefixedArray(cs.Int32ub, ExtentRecord),
)

TitleRecord = cs.Struct(
    "title_id" / Text(cs.Int8ub),
    "name" / Text(cs.Int16ub),
    "kind" / Text(cs.Int8ub),
    "entry" / Text(cs.Int16ub),
    "state" / cs.Int8ub,
    "installed" / cs.Int64ub,
    "mid" / OptionalId(IdKind.MEDIA),
    "title_digest" / cs.Bytes(32),
    "key_salt" / cs.Bytes(32),
    "owner" / cs.Bytes(OWNER_SIZE),
    "bound_to" / cs.Bytes(OWNER_SIZE),
    "progress" / cs.Int64ub,  # plaintext bytes durable, over its files in order
    "entry_tag" / cs.Bytes(32),  # bindings.title_tag: the entry, kind and digest under the title's key
    "metadata" / Blob(cs.Int32ub),
    "files" / cs.PrefixedArray(cs.Int32ub, FileRecord),
)

CatalogBody = cs.Struct(
    "magic" / cs.Const(CATALOG_MAGIC),
    "generation" / cs.Int64ub,
    "titles" / cs.PrefixedArray(cs.Int32ub, TitleRecord),
    # the highest card epoch seen per owner: an older (superseded) card is refused on this HDD
    "card_epochs" / cs.PrefixedArray(cs.Int32ub, cs.Struct("owner" / cs.Bytes(OWNER_SIZE), "epoch" / cs.Int32ub)),
)


@dataclass(frozen=True)
class HddFile:
    path: str
    size: int
    stream_id: bytes
    extents: tuple[Extent, ...]
    executable: bool = False
    sealed_digest: bytes = bytes(32)
    block_size: int = crypto.HDD_BLOCK_SIZE

    @property
    def layout(self) -> crypto.BlockLayout:
        return crypto.BlockLayout(self.size, self.block_size)

    def cipher(self, title_key: bytes) -> crypto.BlockCipher:
        return crypto.BlockCipher(title_key, self.stream_id, self.size, block_size=self.block_size)

    def pieces(self, offset: int, length: int) -> list[Extent]:
        """Where bytes [offset, offset + length) of this file's sealed stream lie in the image: one
        extent per extent of the file they cross."""
        out = []
        for ext in self.extents:
            if length <= 0:
                break
            if offset < ext.length:
                n = min(length, ext.length - offset)
                out.append(Extent(ext.offset + offset, n))
                length -= n
                offset = 0
            else:
                offset -= ext.length
        if length > 0:
            raise ValueError("offset beyond the file's extents")
        return out

    def locate(self, sealed_offset: int) -> int:
        """Image offset of byte ``sealed_offset`` of this file's sealed stream."""
        for ext in self.extents:
            if sealed_offset < ext.length:
                return ext.offset + sealed_offset
            sealed_offset -= ext.length
        raise ValueError("offset beyond the file's extents")


@dataclass(frozen=True)
class Title:
    title_id: str
    name: str
    kind: str
    entry: str
    files: tuple[HddFile, ...]
    key_salt: bytes
    owner: bytes  # whose: the fingerprint of the user's Content-Gen-Key (bindings.owner_of)
    bound_to: bytes  # the fingerprint of the TitleBinding it is encrypted under (user + console + HDD)
    state: TitleState = TitleState.INSTALLING
    installed: int = 0
    mid: Id | None = None
    title_digest: bytes = bytes(32)
    progress: int = 0  # plaintext bytes durable, counted over the files in order
    metadata: bytes = b"{}"
    entry_tag: bytes = bytes(32)

    @property
    def sealed_size(self) -> int:
        return sum(f.layout.sealed_size for f in self.files)

    @property
    def size(self) -> int:
        """Plaintext bytes of all its files: what ``progress`` counts up to."""
        return sum(f.size for f in self.files)

    @property
    def share_done(self) -> int:
        """How much of an install is durable, in whole percent."""
        return 100 * self.progress // max(self.size, 1)

    @property
    def complete(self) -> bool:
        return self.state is TitleState.COMPLETE


@dataclass(frozen=True)
class Catalog:
    generation: int = 0
    titles: tuple[Title, ...] = ()
    card_epochs: tuple[tuple[bytes, int], ...] = ()

    def epochs(self) -> dict[bytes, int]:
        return dict(self.card_epochs)

    def title(self, title_id: str) -> Title | None:
        for t in self.titles:
            if t.title_id == title_id:
                return t
        return None


@dataclass(frozen=True)
class Superblock:
    hdd_id: Id
    secret: bytes = field(repr=False)
    nominal_size: int = 0
    formatted: int = 0
    generation: int = 0
    catalog_offset: int = 0
    catalog_length: int = 0
    catalog_sha256: bytes = field(default=bytes(32), repr=False)
    memory_offset: int = 0
    memory_length: int = 0
    catalog_ditto: int = 0  # where the catalog's second copy lies
    block_size: int = crypto.HDD_BLOCK_SIZE  # what new installs use

    @property
    def image_size(self) -> int:
        return self.nominal_size

    @property
    def identity(self) -> Id:
        """What every superblock of one HDD names alike."""
        return self.hdd_id

    @property
    def memory(self) -> Extent | None:
        """Where the internal memory (a card image) lies, if this HDD has one."""
        return Extent(self.memory_offset, self.memory_length) if self.memory_length else None

    @property
    def slot(self) -> int:
        """Generations alternate between the two slots, so a commit never overwrites the current one."""
        return SLOT_OFFSETS[self.generation % 2]

    @property
    def catalog_extent(self) -> Extent:
        return Extent(self.catalog_offset, self.catalog_length)

    @property
    def catalog_copies(self) -> tuple[Extent, Extent]:
        """Both copies of the catalog."""
        return self.catalog_extent, Extent(self.catalog_ditto, self.catalog_length)


def encode_superblock(sb: Superblock) -> bytes:
    body = record(sb, version=VERSION, block_shift=sb.block_size.bit_length() - 1)
    return seal_block(build(SuperblockBody, body, what=f"{WHAT} superblock"))


def decode_superblock(block: bytes, *, path: object) -> Superblock:
    rec = decode_slot(block, SuperblockHead, SuperblockBody, version=VERSION, path=path, what=WHAT)
    sb = from_record(Superblock, rec, block_size=1 << rec.block_shift if 12 <= rec.block_shift <= 16 else 0)
    if (
        sb.nominal_size < MIN_SIZE
        or min(sb.catalog_offset, sb.catalog_ditto) < DATA_START
        or max(e.end for e in sb.catalog_copies) > sb.nominal_size
        or sb.catalog_length == 0
        or sb.block_size not in crypto.HDD_BLOCK_SIZES
        or (
            sb.memory_length
            and (sb.memory_offset < DATA_START or sb.memory_offset + sb.memory_length > sb.nominal_size)
        )
    ):
        raise ImageError(path, "corrupt HDD superblock (catalog out of place)")
    return sb


def encode_catalog(cat: Catalog) -> bytes:
    titles = [record(t, state=int(t.state), files=[_file_record(f) for f in t.files]) for t in cat.titles]
    epochs = [{"owner": o, "epoch": e} for o, e in cat.card_epochs]
    return build(CatalogBody, record(cat, titles=titles, card_epochs=epochs), what=f"{WHAT} catalog")


def _file_record(f: HddFile) -> dict[str, Any]:
    return record(f, block_shift=f.block_size.bit_length() - 1, extents=[record(e) for e in f.extents])


def decode_catalog(data: bytes, sb: Superblock, *, path: object) -> Catalog:
    rec = decode_catalog_record(data, CatalogBody, sb, path=path, what=WHAT)
    titles = []
    for t in rec.titles:
        try:
            state = TitleState(t.state)
        except ValueError:
            raise ImageError(path, f"corrupt HDD catalog (title {t.title_id!r} has unknown state)") from None
        files = tuple(
            from_record(
                HddFile,
                f,
                extents=tuple(from_record(Extent, e) for e in f.extents),
                block_size=_block_size(f.block_shift, t.title_id, path),
            )
            for f in t.files
        )
        titles.append(from_record(Title, t, state=state, files=files))
    return Catalog(rec.generation, tuple(titles), tuple((e.owner, e.epoch) for e in rec.card_epochs))


def _block_size(shift: int, title_id: str, path: object) -> int:
    size = 1 << shift if shift < 32 else 0
    if size not in crypto.HDD_BLOCK_SIZES:
        raise ImageError(path, f"corrupt HDD catalog (title {title_id!r} has a file of unknown block size)")
    return size
