"""The disc image (FIG. 4): a title encrypted with its Content-Key, and the disc's own MID.

Layout (offsets in bytes)::

    0        header block    magic, version, where the manifest and data lie, image size
    4096     MID area block  how this disc was pressed, its MID and the disc's own secret (an
                             Ed25519 key that no label shows), signed by the publisher
    8192     manifest        title ID, name, kind, entry, installer record, publisher key, the
                             file table (path, size, stream ID, offset, SHA-256 of sealed bytes),
                             followed by the publisher's Ed25519 signature of all of it
    data     data region     each file's chunks sealed with the Content-Key (crypto.ChunkCipher),
                             one file after another, from a 4 KiB boundary

Both blocks end in a SHA-256 of the rest of the block. Pressing writes a new MID area and nothing
else, so the discs of one master differ only in block 1. The MID is printed on the disc's label, so
knowing it proves nothing: each pressed disc also carries a secret, an Ed25519 private key whose
public half the publisher registers with the MID. An acquisition signs the request with it
(:func:`vhw.bindings.disc_proof`), and the server checks that signature before it flags anything:
whoever holds the disc (or a byte-for-byte copy of it: a file cannot be uncopyable) can acquire,
whoever has only read its label cannot. The *title digest* is the SHA-256 of the
signed manifest: the publisher registers it with the server, the MID signature covers it, and the
console checks the disc it installs from against what the server says it sold.

Without the Content-Key anyone can still check a disc completely: the manifest is signed and names
the SHA-256 of every file's sealed bytes. With the key, every chunk is authenticated on its own.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import construct as cs

from .. import crypto
from ..errors import ImageError, IntegrityError
from ..ids import Id, IdKind
from .common import (
    BLOCK_SIZE,
    Blob,
    OptionalId,
    Text,
    build,
    open_block,
    parse,
    record,
    seal_block,
    valid_relpath,
    valid_title_id,
    version_error,
)

__all__ = [
    "KINDS",
    "MID_AREA_OFFSET",
    "VERSION",
    "WHAT",
    "Disc",
    "DiscFile",
    "Manifest",
    "Pressing",
    "data_offset_for",
    "decode",
    "encode_header",
    "encode_mid_area",
    "layout_files",
    "manifest_bytes",
    "manifest_problem",
    "mid_signed_message",
    "sign_manifest",
    "title_digest",
]


HEADER_MAGIC = b"VHWDISC\0"
MID_MAGIC = b"VHWMID\0\0"
MANIFEST_MAGIC = b"VHWMANI\0"
VERSION = 2  # 2: the disc's own secret in the MID area (version 1 discs are refused in one line)
WHAT = "disc image"
MANIFEST_OFFSET = 2 * BLOCK_SIZE
MID_AREA_OFFSET = BLOCK_SIZE
MAX_MANIFEST = 64 * 1024 * 1024  # a title with ~200k files; refuses absurd lengths before reading

KINDS = ("game", "music", "movie", "application")


class Pressing(enum.IntEnum):
    MASTER = 0  # a master image: not a disc a user can install from
    MID = 1  # a pressed disc with its own MID
    NO_MID = 2  # pressed without a MID (installs for a fee, FIG. 15)


Header = cs.Struct(
    "magic" / cs.Const(HEADER_MAGIC),
    "version" / cs.Int16ub,
    "image_size" / cs.Int64ub,
    "manifest_length" / cs.Int32ub,
    "data_offset" / cs.Int64ub,
    "data_length" / cs.Int64ub,
)

MidArea = cs.Struct(
    "magic" / cs.Const(MID_MAGIC),
    "pressing" / cs.Int8ub,
    "mid" / OptionalId(IdKind.MEDIA),
    "secret" / cs.Bytes(crypto.SECRET_SEED_SIZE),  # zeros on a master and a disc without a MID
    "signature" / cs.Bytes(crypto.SIGNATURE_SIZE),
)

FileEntry = cs.Struct(
    "path" / Text(cs.Int16ub),
    "size" / cs.Int64ub,
    "executable" / cs.Flag,
    "stream_id" / cs.Bytes(crypto.STREAM_ID_SIZE),
    "offset" / cs.Int64ub,  # of the sealed chunks, from the start of the data region
    "sealed_sha256" / cs.Bytes(32),
)

ManifestBody = cs.Struct(
    "magic" / cs.Const(MANIFEST_MAGIC),
    "title_id" / Text(cs.Int8ub),
    "name" / Text(cs.Int16ub),
    "kind" / Text(cs.Int8ub),
    "entry" / Text(cs.Int16ub),
    "title_version" / cs.Int32ub,
    "mastered" / cs.Int64ub,
    "chunk_size" / cs.Int32ub,
    "publisher_key" / cs.Bytes(crypto.PUBLIC_KEY_SIZE),
    "installer"
    / cs.Struct(
        "name" / Text(cs.Int8ub),
        "version" / cs.Int16ub,
        "required_space" / cs.Int64ub,  # sealed bytes the HDD must have free
    ),
    "metadata" / Blob(cs.Int32ub),  # the title's vhw-title.json, shown by `info`
    "files" / cs.PrefixedArray(cs.Int32ub, FileEntry),
)


@dataclass(frozen=True)
class DiscFile:
    path: str
    size: int
    stream_id: bytes
    offset: int = 0
    sealed_sha256: bytes = bytes(32)
    executable: bool = False

    @property
    def layout(self) -> crypto.ChunkLayout:
        return crypto.ChunkLayout(self.size)


@dataclass(frozen=True)
class Manifest:
    title_id: str
    name: str
    kind: str
    entry: str
    publisher_key: bytes
    files: tuple[DiscFile, ...]
    mastered: int = 0
    title_version: int = 1
    chunk_size: int = crypto.CHUNK_SIZE
    installer_name: str = "vhw-installer"
    installer_version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def data_length(self) -> int:
        return sum(f.layout.sealed_size for f in self.files)

    def file(self, path: str) -> DiscFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


@dataclass(frozen=True)
class Disc:
    """Everything in a disc image but its data region."""

    manifest: Manifest
    title_digest: bytes  # SHA-256 of the signed manifest
    manifest_length: int
    data_offset: int
    pressing: Pressing = Pressing.MASTER
    mid: Id | None = None
    mid_signature: bytes = bytes(crypto.SIGNATURE_SIZE)
    secret: bytes = field(default=bytes(crypto.SECRET_SEED_SIZE), repr=False)  # the disc's own key

    @property
    def disc_key(self) -> bytes | None:
        """The public half of the disc's secret (registered with its MID), or None: no MID."""
        if self.pressing is not Pressing.MID:
            return None
        return crypto.public_bytes(crypto.signing_key_from(self.secret))

    @property
    def image_size(self) -> int:
        return self.data_offset + self.manifest.data_length


def data_offset_for(manifest_length: int) -> int:
    end = MANIFEST_OFFSET + manifest_length
    return -(-end // BLOCK_SIZE) * BLOCK_SIZE


def layout_files(files: list[DiscFile]) -> tuple[DiscFile, ...]:
    """Give each file its offset in the data region: one after another, in order."""
    out, offset = [], 0
    for f in files:
        out.append(DiscFile(f.path, f.size, f.stream_id, offset, f.sealed_sha256, f.executable))
        offset += f.layout.sealed_size
    return tuple(out)


# -- manifest -----------------------------------------------------------------------------------


def manifest_bytes(m: Manifest) -> bytes:
    return build(
        ManifestBody,
        {
            "title_id": m.title_id,
            "name": m.name,
            "kind": m.kind,
            "entry": m.entry,
            "title_version": m.title_version,
            "mastered": m.mastered,
            "chunk_size": m.chunk_size,
            "publisher_key": m.publisher_key,
            "installer": {
                "name": m.installer_name,
                "version": m.installer_version,
                "required_space": m.data_length,
            },
            "metadata": json.dumps(m.metadata, sort_keys=True, separators=(",", ":")).encode(),
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "executable": f.executable,
                    "stream_id": f.stream_id,
                    "offset": f.offset,
                    "sealed_sha256": f.sealed_sha256,
                }
                for f in m.files
            ],
        },
        what="manifest",
    )


def manifest_signed_message(body: bytes) -> bytes:
    return crypto.context("disc-manifest", body)


def sign_manifest(m: Manifest, sign: Callable[[bytes], bytes]) -> bytes:
    """The manifest region: the body and ``sign(message)``'s 64-byte signature."""
    body = manifest_bytes(m)
    return body + sign(manifest_signed_message(body))


def decode_manifest(region: bytes, *, path: object) -> Manifest:
    """Check the signature and the consistency of a manifest region; return the manifest."""
    if len(region) < crypto.SIGNATURE_SIZE:
        raise ImageError(path, "truncated disc manifest")
    body, signature = region[: -crypto.SIGNATURE_SIZE], region[-crypto.SIGNATURE_SIZE :]
    rec = parse(ManifestBody, body, path=path, what="disc manifest")
    try:
        crypto.verify(rec.publisher_key, signature, manifest_signed_message(body))
    except crypto.Invalid:
        raise IntegrityError(path, "disc manifest signature does not verify (modified disc)") from None
    return manifest_from_record(rec, path=path)


def manifest_from_record(rec: Any, *, path: object) -> Manifest:
    """A parsed manifest body as a Manifest, refused when it is not consistent."""
    try:
        metadata = json.loads(rec.metadata) if rec.metadata else {}
    except ValueError:
        metadata = None
    m = Manifest(
        title_id=rec.title_id,
        name=rec.name,
        kind=rec.kind,
        entry=rec.entry,
        publisher_key=rec.publisher_key,
        files=tuple(DiscFile(f.path, f.size, f.stream_id, f.offset, f.sealed_sha256, f.executable) for f in rec.files),
        mastered=rec.mastered,
        title_version=rec.title_version,
        chunk_size=rec.chunk_size,
        installer_name=rec.installer.name,
        installer_version=rec.installer.version,
        metadata=metadata if isinstance(metadata, dict) else {},
    )
    problem = manifest_problem(m)
    if metadata is None or not isinstance(metadata, dict):
        problem = problem or "metadata is not a JSON object"
    if rec.installer.required_space != m.data_length:
        problem = problem or "installer record disagrees with the file table"
    if problem:  # signed but inconsistent: a publisher tool bug or a forged key, refuse either way
        raise ImageError(path, f"invalid disc manifest: {problem}")
    return m


def manifest_problem(m: Manifest) -> str | None:
    """What makes a manifest unusable, or None."""
    if not valid_title_id(m.title_id):
        return f"title ID {m.title_id!r} is not valid"
    if m.kind not in KINDS:
        return f"unknown title kind {m.kind!r}"
    if m.chunk_size != crypto.CHUNK_SIZE:
        return f"chunk size {m.chunk_size} is not supported"
    seen: set[str] = set()  # files
    dirs: set[str] = set()  # every folder a file lies in
    offset = 0
    for f in m.files:
        if not valid_relpath(f.path):
            return f"file path {f.path!r} is not allowed"
        parents = ["/".join(f.path.split("/")[:i]) for i in range(1, f.path.count("/") + 1)]
        if f.path in seen or f.path in dirs or any(p in seen for p in parents):
            return f"file path {f.path!r} appears twice"
        seen.add(f.path)
        dirs.update(parents)
        if f.offset != offset:
            return f"file {f.path!r} is not where the file table says"
        offset += f.layout.sealed_size
    if m.entry and m.entry not in seen:
        return f"entry point {m.entry!r} is not a file of the title"
    return None


# -- header and MID area -------------------------------------------------------------------------


def encode_header(disc: Disc) -> bytes:
    fields = record(disc, version=VERSION, image_size=disc.image_size, data_length=disc.manifest.data_length)
    return seal_block(build(Header, fields, what="disc header"))


def decode_header(block: bytes, *, path: object, file_size: int) -> Any:
    """Check block 0 against the file's real size; return the parsed header."""
    if file_size == 0:
        raise ImageError(path, f"empty file, not a {WHAT}")
    if block[:8] != HEADER_MAGIC:
        if file_size < len(HEADER_MAGIC) and HEADER_MAGIC.startswith(block[:file_size]):
            raise ImageError(path, f"truncated {WHAT} ({file_size} bytes)")
        raise ImageError(path, f"not a {WHAT} (unknown format)")
    if file_size < BLOCK_SIZE:
        raise ImageError(path, f"truncated {WHAT} ({file_size} bytes)")
    body = open_block(block, path=path, what="disc header")
    h = parse(Header, body, path=path, what="disc header")
    if h.version != VERSION:
        raise version_error(path, WHAT, h.version, VERSION)
    if not 0 < h.manifest_length <= MAX_MANIFEST or h.data_offset != data_offset_for(h.manifest_length):
        raise ImageError(path, "corrupt disc header (manifest out of place)")
    if h.image_size != h.data_offset + h.data_length:
        raise ImageError(path, "corrupt disc header (sizes disagree)")
    if file_size < h.image_size:
        raise ImageError(path, f"truncated {WHAT} ({file_size} of {h.image_size} bytes)")
    if file_size > h.image_size:
        raise ImageError(path, f"{WHAT} has {file_size - h.image_size} unexpected trailing bytes")
    return h


def mid_signed_message(title_digest: bytes, pressing: Pressing, mid: Id | None, disc_key: bytes | None) -> bytes:
    """What the publisher signs of a pressed disc: the title, the MID and the disc's public key."""
    return crypto.context("disc-mid", title_digest, int(pressing), str(mid) if mid else "", disc_key or b"")


def encode_mid_area(pressing: Pressing, mid: Id | None, secret: bytes | None, signature: bytes) -> bytes:
    return seal_block(
        build(
            MidArea,
            {
                "pressing": int(pressing),
                "mid": mid,
                "secret": secret or bytes(crypto.SECRET_SEED_SIZE),
                "signature": signature,
            },
            what="MID area",
        )
    )


def decode_mid_area(
    block: bytes, *, path: object, manifest: Manifest, title_digest: bytes
) -> tuple[Pressing, Id | None, bytes, bytes]:
    body = open_block(block, path=path, what="disc MID area")
    rec = parse(MidArea, body, path=path, what="disc MID area")
    try:
        pressing = Pressing(rec.pressing)
    except ValueError:
        raise ImageError(path, "corrupt disc MID area (unknown pressing)") from None
    if (rec.mid is None) != (pressing is not Pressing.MID):
        raise ImageError(path, "corrupt disc MID area (MID does not fit the pressing)")
    disc_key = None
    if pressing is Pressing.MID:
        try:
            disc_key = crypto.public_bytes(crypto.signing_key_from(rec.secret))
        except crypto.Invalid:
            raise ImageError(path, "corrupt disc MID area (the disc's secret is not a key)") from None
    elif rec.secret.strip(b"\0"):
        raise ImageError(path, "corrupt disc MID area (a secret on a disc without a MID)")
    if pressing is not Pressing.MASTER:
        try:
            crypto.verify(
                manifest.publisher_key, rec.signature, mid_signed_message(title_digest, pressing, rec.mid, disc_key)
            )
        except crypto.Invalid:
            raise IntegrityError(path, "disc MID is not signed by the title's publisher") from None
    return pressing, rec.mid, rec.secret, rec.signature


def title_digest(manifest_region: bytes) -> bytes:
    return hashlib.sha256(manifest_region).digest()


def decode(read: Callable[[int, int], bytes], *, size: int, path: object) -> tuple[Disc, bytes]:
    """A whole disc image's header, MID area and manifest, read through ``read(length, offset)``
    (a file, or bytes in memory); returns the disc and its signed manifest region."""
    head = read(2 * BLOCK_SIZE, 0)
    h = decode_header(head[:BLOCK_SIZE], path=path, file_size=size)
    span = read(h.data_offset - MANIFEST_OFFSET, MANIFEST_OFFSET)
    if len(span) != h.data_offset - MANIFEST_OFFSET:
        raise ImageError(path, f"truncated {WHAT}")
    region = span[: h.manifest_length]
    if span[h.manifest_length :].strip(b"\0"):  # the padding is covered by nothing else
        raise IntegrityError(path, "disc image was modified (data after the manifest)")
    manifest = decode_manifest(region, path=path)
    if manifest.data_length != h.data_length:
        raise ImageError(path, "corrupt disc header (data length disagrees with the manifest)")
    digest = title_digest(region)
    pressing, mid, secret, signature = decode_mid_area(
        head[BLOCK_SIZE:], path=path, manifest=manifest, title_digest=digest
    )
    return Disc(manifest, digest, h.manifest_length, h.data_offset, pressing, mid, signature, secret), region
