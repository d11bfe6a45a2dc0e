"""The memory card (the patent's memory card 16): MC-ID, the secret MC-Key, what the flows store,
and a save area of fixed capacity for game saves ("Memory cards for saving, which perform saving
(storing) and readout of game data", FIG. 2).

The manufacturer formats a card with a fresh MC-ID (printed on its label), MC-Key (never shown,
never sent: the server has its own copy from the factory registration) and a save capacity
(8 MiB by default, like a real card). The flows then store the licensing items:

* ``user_id``: the User ID wrapped with the MC-Key (S6);
* ``licenses``: per disc, its MID wrapped with the MC-Key and, until the copy is complete, the
  Content-Key wrapped with the MC-Key, bound to this card, MID and title, and sealed to the user's
  console and HDD (S16, deleted at S28);
* ``content_gen_key``: the Content-Gen-Key wrapped with the MC-Key and sealed to the user's
  console and HDD (S16): the card alone opens neither key (:mod:`vhw.bindings`);
* ``sealed_ids``: Client ID + HDD-ID sealed with the Content-Gen-Key (S16), checked at S23/S33;
* ``card_token``: the server's signed statement of this card's epoch (a reissued card supersedes
  the old one; :mod:`vhw.bindings`).

and the running titles store their saves (:mod:`vhw.saves` seals them). Layout of a card image,
which is a sparse file of its own, or a region of an HDD image (an HDD's internal memory)::

    0           superblock slot 0, copy A ) one 4 KiB block each, checksummed; the valid slot
    4096        superblock slot 1, copy A ) with the higher generation is current (as the HDD's
    8192        superblock slot 0, copy B ) two slots), each slot kept twice (ditto copies)
    12288       superblock slot 1, copy B )
    16384       catalog half 0, copy A    ) CATALOG_ROOM each: generation g's catalog is in half
    16384 + R   catalog half 1, copy A    ) g % 2, so a commit never writes over the current one;
    16384 + 2R  catalog half 0, copy B    ) each half kept twice
    16384 + 3R  catalog half 1, copy B    )
    16384 + 4R  save area                 ``capacity`` bytes of save data in 4 KiB blocks, copy-on-write

A superblock names the MC-ID, the MC-Key, the capacity, the generation, and the length and
SHA-256 of that generation's catalog. The catalog holds the licensing items and the save
directory: per save its title ID, name, size, modified time, a few bytes of the title's own
metadata ("level 3"), its stream ID, the extents of its sealed data, their SHA-256, and a tag that
authenticates the whole entry under the card's save key. A commit writes new save data into free
blocks, syncs, writes the next catalog into both copies of the other half, syncs, writes the next
superblock into the other slot's copy A, syncs, and its copy B, syncs (:mod:`vhw.stores.card`): a
crash at any moment leaves the old state or the new one, every other save and every licensing
item intact, and one damaged byte anywhere in the metadata is made good from its ditto copy
(:mod:`vhw.stores.ditto`): a Content-Key deleted at S28 never reappears from an older generation
in silence.

Version 3 added the save area; version 4 the ditto copies. Older cards are refused with a line
that says to make them again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import construct as cs

from .. import crypto
from ..errors import ImageError
from ..ids import Id, IdKind
from .common import BLOCK_SIZE, Blob, Extent, IdField, Text, build, from_record, record, seal_block
from .ditto import SLOT_OFFSETS, decode_catalog_record, decode_slot

__all__ = [
    "DEFAULT_CAPACITY",
    "MAGIC",
    "MAX_CAPACITY",
    "MAX_SAVES",
    "META_SIZE",
    "SAVE_START",
    "VERSION",
    "WHAT",
    "Card",
    "Catalog",
    "License",
    "Save",
    "Superblock",
    "decode_catalog",
    "decode_superblock",
    "encode_catalog",
    "encode_superblock",
    "image_size",
    "valid_save_name",
]


MAGIC = b"VHWCARD\0"
CATALOG_MAGIC = b"VHWCCAT\0"
VERSION = 4
WHAT = "memory card"
MAX_LICENSES = 1024  # a card's capacity in discs; far above what one user installs at once
MAX_SAVES = 256  # directory entries (a PS2 card holds 15 blocks' worth of small saves per MB)
META_SIZE = 64  # bytes of a title's own metadata per save ("level 3, 2 h 10 min")
#: 512 KiB per catalog half: 1,024 licenses with pending keys (~250 bytes each) and 256 saves fit
CATALOG_ROOM = 512 * 1024
CATALOG_OFFSETS = (4 * BLOCK_SIZE, 4 * BLOCK_SIZE + CATALOG_ROOM)  # copy A of halves 0 and 1
CATALOG_DITTO = 2 * CATALOG_ROOM  # copy B of a half lies this far after its copy A
SAVE_START = 4 * BLOCK_SIZE + 4 * CATALOG_ROOM
DEFAULT_CAPACITY = 8 * 1024 * 1024  # a PS2 memory card's 8 MB
MAX_CAPACITY = 1024 * 1024 * 1024
SAVE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def valid_save_name(name: str) -> bool:
    """Save names are file names in the running title's save folder: 1-64 of A-Z a-z 0-9 . _ -,
    not starting with a dot."""
    return SAVE_NAME_RE.fullmatch(name) is not None


def image_size(capacity: int) -> int:
    """Bytes a card image of this save capacity takes (nominal: the file is sparse)."""
    return SAVE_START + capacity


SuperblockHead = cs.Struct("magic" / cs.Const(MAGIC), "version" / cs.Int16ub)

SuperblockBody = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int16ub,
    "mc_id" / IdField(IdKind.CARD),
    "mc_key" / cs.Bytes(crypto.KEY_SIZE),
    "formatted" / cs.Int64ub,
    "capacity" / cs.Int64ub,
    "generation" / cs.Int64ub,
    "catalog_length" / cs.Int32ub,
    "catalog_sha256" / cs.Bytes(32),
)

LicenseRecord = cs.Struct(
    "title_id" / Text(cs.Int8ub),
    "mid" / Blob(),  # wrapped MID
    "content_key" / Blob(),  # wrapped and sealed Content-Key, empty once the copy is complete
    "acquired" / cs.Int64ub,
)

ExtentRecord = cs.Struct("offset" / cs.Int64ub, "length" / cs.Int64ub)

SaveRecord = cs.Struct(
    "title_id" / Text(cs.Int8ub),
    "name" / Text(cs.Int8ub),
    "size" / cs.Int64ub,
    "modified" / cs.Int64ub,  # nanoseconds since the epoch
    "meta" / Blob(cs.Int8ub),
    "stream_id" / cs.Bytes(crypto.STREAM_ID_SIZE),
    "sealed_sha256" / cs.Bytes(32),
    "tag" / cs.Bytes(32),  # HMAC of the entry under the card's save key (vhw.saves)
    "extents" / cs.PrefixedArray(cs.Int16ub, ExtentRecord),
)

CatalogBody = cs.Struct(
    "magic" / cs.Const(CATALOG_MAGIC),
    "generation" / cs.Int64ub,
    "user_id" / Blob(),
    "content_gen_key" / Blob(),
    "sealed_ids" / Blob(),
    "card_token" / Blob(),
    "licenses" / cs.PrefixedArray(cs.Int16ub, LicenseRecord),
    "saves" / cs.PrefixedArray(cs.Int16ub, SaveRecord),
)


@dataclass(frozen=True)
class License:
    title_id: str
    mid: bytes  # wrapped
    content_key: bytes = b""  # wrapped and sealed; b"" once installed
    acquired: int = 0


@dataclass(frozen=True)
class Card:
    """The card's identity and licensing items (what the flows read and change)."""

    mc_id: Id
    mc_key: bytes = field(repr=False)  # secret: never in a repr, a log line or an `info`
    formatted: int = 0
    user_id: bytes = b""
    content_gen_key: bytes = b""
    sealed_ids: bytes = b""
    card_token: bytes = b""  # which epoch of this user's cards this one is (vhw.bindings)
    licenses: tuple[License, ...] = ()

    @property
    def registered(self) -> bool:
        return bool(self.user_id)

    def with_license(self, lic: License) -> Card:
        """Add a license, replacing one for the same wrapped MID."""
        kept = tuple(x for x in self.licenses if x.mid != lic.mid)
        return replace(self, licenses=kept + (lic,))


@dataclass(frozen=True)
class Save:
    """One save in the directory. ``tag`` authenticates every other field (vhw.saves)."""

    title_id: str
    name: str
    size: int
    modified: int
    meta: bytes
    stream_id: bytes
    sealed_sha256: bytes
    tag: bytes
    extents: tuple[Extent, ...] = ()

    @property
    def layout(self) -> crypto.ChunkLayout:
        return crypto.ChunkLayout(self.size)

    @property
    def key(self) -> tuple[str, str]:
        return (self.title_id, self.name)


@dataclass(frozen=True)
class Superblock:
    mc_id: Id
    mc_key: bytes = field(repr=False)
    formatted: int = 0
    capacity: int = DEFAULT_CAPACITY
    generation: int = 0
    catalog_length: int = 0
    catalog_sha256: bytes = field(default=bytes(32), repr=False)

    @property
    def slot(self) -> int:
        """Generations alternate between the two slots, so a commit never overwrites the current one."""
        return SLOT_OFFSETS[self.generation % 2]

    @property
    def catalog_offset(self) -> int:
        return CATALOG_OFFSETS[self.generation % 2]

    @property
    def catalog_copies(self) -> tuple[Extent, Extent]:
        """Both copies of this generation's catalog."""
        return Extent(self.catalog_offset, self.catalog_length), Extent(
            self.catalog_offset + CATALOG_DITTO, self.catalog_length
        )

    @property
    def image_size(self) -> int:
        return image_size(self.capacity)

    @property
    def identity(self) -> tuple[Id, bytes]:
        """What every superblock of one card names alike."""
        return self.mc_id, self.mc_key


@dataclass(frozen=True)
class Catalog:
    generation: int
    card: Card
    saves: tuple[Save, ...] = ()

    def save(self, title_id: str, name: str) -> Save | None:
        for s in self.saves:
            if s.title_id == title_id and s.name == name:
                return s
        return None


def encode_superblock(sb: Superblock) -> bytes:
    return seal_block(build(SuperblockBody, record(sb, version=VERSION), what=f"{WHAT} superblock"))


def decode_superblock(block: bytes, *, path: object) -> Superblock:
    sb = from_record(
        Superblock, decode_slot(block, SuperblockHead, SuperblockBody, version=VERSION, path=path, what=WHAT)
    )
    if sb.capacity > MAX_CAPACITY or sb.capacity % BLOCK_SIZE or not 0 < sb.catalog_length <= CATALOG_ROOM:
        raise ImageError(path, "corrupt memory card superblock (sizes out of range)")
    return sb


def encode_catalog(cat: Catalog) -> bytes:
    c = cat.card
    if len(c.licenses) > MAX_LICENSES:
        raise ImageError(WHAT, f"cannot be written: a memory card holds at most {MAX_LICENSES} licenses")
    saves = [record(s, extents=[record(e) for e in s.extents]) for s in cat.saves]
    data = build(
        CatalogBody,
        record(c, generation=cat.generation, licenses=[record(x) for x in c.licenses], saves=saves),
        what=f"{WHAT} catalog",
    )
    if len(data) > CATALOG_ROOM:
        raise ImageError(WHAT, "cannot be written: its directory is full")
    return data


def decode_catalog(data: bytes, sb: Superblock, *, path: object) -> Catalog:
    rec = decode_catalog_record(data, CatalogBody, sb, path=path, what=WHAT)
    licenses = tuple(from_record(License, x) for x in rec.licenses)
    card = from_record(Card, rec, mc_id=sb.mc_id, mc_key=sb.mc_key, formatted=sb.formatted, licenses=licenses)
    saves = tuple(from_record(Save, s, extents=tuple(from_record(Extent, e) for e in s.extents)) for s in rec.saves)
    return Catalog(rec.generation, card, saves)
