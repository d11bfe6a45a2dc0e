"""Game saves on a memory card, sealed and opened without I/O.

Every save is encrypted and authenticated under the card's *save key*, derived with HKDF from the
card's MC-Key and bound to its MC-ID and the owner's User ID. The data is cut into authenticated
chunks (:class:`vhw.crypto.ChunkCipher`) under a key for the title and a fresh stream ID per
version; the directory entry (title ID, name, size, modified time, metadata, stream ID and the
SHA-256 of the sealed data) carries an HMAC under the save key. So:

* a save edited by hand (its data or its entry) does not open;
* a save whose bytes were copied onto another card (another MC-Key), or another user's card, does
  not open there;
* ``vhw card saves copy`` moves a save between two cards of the same user by opening it with the
  one card's key and sealing it anew with the other's.

The card's holder holds the MC-Key: the binding protects saves against edited and moved bytes, not
against the card's own holder (docs/threat-model.md).

An export file (``vhw card saves export``) is the owner's own copy of one save, for a backup or
another card of theirs: declared with construct, it names the User ID it belongs to and carries the
plaintext with a SHA-256 over all of it, so a truncated, damaged or foreign file is refused; import
accepts only exports of the card's own user and seals the save under that card's key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace

import construct as cs

from . import crypto
from .errors import ImageError, InputError, IntegrityError
from .formats.card import META_SIZE, Save, valid_save_name
from .formats.common import Blob, IdField, Text, build, parse, valid_title_id
from .ids import Id, IdKind


class SaveInvalid(IntegrityError):
    """A save does not open with this card's key: edited by hand, or copied from another card."""


def save_key(mc_key: bytes, mc_id: Id, user: Id) -> bytes:
    return crypto.derive(mc_key, crypto.context("card-save-key", mc_id, user))


def _entry_message(
    title_id: str, name: str, size: int, modified: int, meta: bytes, stream_id: bytes, sealed_sha256: bytes
) -> bytes:
    return crypto.context("card-save-entry", title_id, name, size, modified, meta, stream_id, sealed_sha256)


def _tag(
    key: bytes, title_id: str, name: str, size: int, modified: int, meta: bytes, stream_id: bytes, sealed_sha256: bytes
) -> bytes:
    return crypto.mac(key, _entry_message(title_id, name, size, modified, meta, stream_id, sealed_sha256))


def _data_cipher(key: bytes, title_id: str, stream_id: bytes, size: int) -> crypto.ChunkCipher:
    return crypto.ChunkCipher(crypto.derive(key, crypto.context("card-save-data", title_id)), stream_id, size)


def check_fields(title_id: str, name: str, meta: bytes) -> None:
    if not valid_title_id(title_id):
        raise InputError(f"{title_id!r} is not a title ID")
    if not valid_save_name(name):
        raise InputError(f"{name!r} is not a save name (1-64 of A-Z a-z 0-9 . _ -, not starting with .)")
    if len(meta) > META_SIZE:
        raise InputError(f"a save's metadata has {len(meta)} bytes; a save keeps at most {META_SIZE}")


@dataclass(frozen=True)
class Sealed:
    """A save sealed for one card: its directory entry (no extents yet) and its sealed data."""

    entry: Save
    data: bytes


def seal(
    key: bytes,
    title_id: str,
    name: str,
    plaintext: bytes,
    *,
    modified: int,
    meta: bytes = b"",
) -> Sealed:
    check_fields(title_id, name, meta)
    stream_id = os.urandom(crypto.STREAM_ID_SIZE)  # fresh per version: a key and stream never seal twice
    cipher = _data_cipher(key, title_id, stream_id, len(plaintext))
    layout = cipher.layout
    view = memoryview(plaintext)
    sealed = b"".join(
        cipher.seal(i, view[i * layout.chunk_size : i * layout.chunk_size + layout.plain_length(i)])
        for i in range(layout.count)
    )
    digest = hashlib.sha256(sealed).digest()
    tag = _tag(key, title_id, name, len(plaintext), modified, meta, stream_id, digest)
    return Sealed(Save(title_id, name, len(plaintext), modified, meta, stream_id, digest, tag), sealed)


def verify_entry(key: bytes, save: Save) -> bool:
    """The entry is one this card sealed, unchanged (constant-time comparison)."""
    expected = _tag(
        key, save.title_id, save.name, save.size, save.modified, save.meta, save.stream_id, save.sealed_sha256
    )
    return crypto.equal(expected, save.tag)


def retagged(
    key: bytes, save: Save, *, name: str | None = None, modified: int | None = None, meta: bytes | None = None
) -> Save:
    """The same sealed data under another name, time or metadata (a rename): only the entry's
    tag changes. The caller has verified ``save`` first."""
    new = replace(
        save,
        name=save.name if name is None else name,
        modified=save.modified if modified is None else modified,
        meta=save.meta if meta is None else meta,
    )
    check_fields(new.title_id, new.name, new.meta)
    return replace(
        new, tag=_tag(key, new.title_id, new.name, new.size, new.modified, new.meta, new.stream_id, new.sealed_sha256)
    )


def open_save(key: bytes, save: Save, sealed: bytes, *, where: object = "memory card") -> bytes:
    """The plaintext of a save, or :class:`SaveInvalid` in one line."""
    problem = SaveInvalid(
        where,
        f"save {save.title_id}/{save.name} does not verify: it was edited,"
        " or copied from another card or another user's",
    )
    if not verify_entry(key, save) or hashlib.sha256(sealed).digest() != save.sealed_sha256:
        raise problem
    cipher = _data_cipher(key, save.title_id, save.stream_id, save.size)
    layout = cipher.layout
    if len(sealed) != layout.sealed_size:
        raise problem
    out = bytearray()
    try:
        for i in range(layout.count):
            at = layout.sealed_offset(i)
            out += cipher.open(i, sealed[at : at + layout.sealed_length(i)])
    except crypto.Invalid:
        raise problem from None
    return bytes(out)


# -- export files -------------------------------------------------------------------------------------

EXPORT_MAGIC = b"VHWSAVE\0"
EXPORT_VERSION = 1
EXPORT_WHAT = "save export"

ExportBody = cs.Struct(
    "magic" / cs.Const(EXPORT_MAGIC),
    "version" / cs.Int16ub,
    "user_id" / IdField(IdKind.USER),
    "title_id" / Text(cs.Int8ub),
    "name" / Text(cs.Int8ub),
    "modified" / cs.Int64ub,
    "meta" / Blob(cs.Int8ub),
    "data" / Blob(cs.Int32ub),
    cs.Terminated,
)


@dataclass(frozen=True)
class Exported:
    user: Id
    title_id: str
    name: str
    modified: int
    meta: bytes
    data: bytes


def encode_export(e: Exported) -> bytes:
    body = build(
        ExportBody,
        {
            "version": EXPORT_VERSION,
            "user_id": e.user,
            "title_id": e.title_id,
            "name": e.name,
            "modified": e.modified,
            "meta": e.meta,
            "data": e.data,
        },
        what=EXPORT_WHAT,
    )
    return body + hashlib.sha256(body).digest()


def decode_export(data: bytes, *, path: object) -> Exported:
    if len(data) < 42 or not data.startswith(EXPORT_MAGIC):
        raise ImageError(path, f"not a {EXPORT_WHAT} (unknown format)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise IntegrityError(path, f"{EXPORT_WHAT} is damaged, truncated or was modified (checksum mismatch)")
    rec = parse(ExportBody, body, path=path, what=EXPORT_WHAT)
    if rec.version != EXPORT_VERSION:
        raise ImageError(path, f"{EXPORT_WHAT} version {rec.version} is not supported")
    try:
        check_fields(rec.title_id, rec.name, rec.meta)
    except ImageError as exc:
        raise ImageError(path, f"invalid {EXPORT_WHAT}: {exc.problem}") from None
    return Exported(rec.user_id, rec.title_id, rec.name, rec.modified, rec.meta, rec.data)
