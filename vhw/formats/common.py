"""Pieces every device format shares: ID fields, checksummed envelopes, parsing that fails clearly.

Formats are "sans-IO for files": they turn ``bytes`` into objects and back. Device classes in
:mod:`vhw.devices` own the files, the locks and the atomic writes.

Small devices (console ROM, memory card) are one *envelope*::

    magic    8 bytes   which device this is ("VHWROM\\0\\0", "VHWCARD\\0")
    version  u16       format version; a newer one is refused by name
    length   u32       bytes of body that follow
    body     length    the device's record, declared per format
    digest   32 bytes  SHA-256 of everything before it

so a foreign file fails on the magic, a newer one on the version, a truncated or extended one on
the length, and a torn or flipped one on the digest, each with its own message, before the body is
ever parsed. (The digest catches accidents; what must resist a deliberate edit is sealed inside
the body with AES-GCM or signed.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import construct as cs

from ..errors import IdError, ImageError, IntegrityError
from ..ids import Id, IdKind

__all__ = [
    "BLOCK_SIZE",
    "Blob",
    "Extent",
    "IdField",
    "Text",
    "build",
    "parse",
    "valid_relpath",
    "valid_title_id",
    "version_error",
]


DIGEST_SIZE = 32
D = TypeVar("D")


class IdAdapter(cs.Adapter):  # type: ignore[misc]  # construct has no type information
    """An :class:`~vhw.ids.Id` of one kind, stored as its value in a fixed number of bytes."""

    def __init__(self, kind: IdKind):
        super().__init__(cs.Bytes(kind.nbytes))
        self.kind = kind

    def _decode(self, obj: bytes, context: Any, path: Any) -> Id:
        try:
            return Id.from_bytes(self.kind, obj)
        except IdError as exc:
            raise cs.ValidationError(str(exc), path=path) from None

    def _encode(self, obj: Id, context: Any, path: Any) -> bytes:
        if not isinstance(obj, Id) or obj.kind is not self.kind:
            raise cs.ValidationError(f"expected a {self.kind.title}", path=path)
        return obj.to_bytes()


def IdField(kind: IdKind) -> cs.Construct:  # noqa: N802 (reads like the other construct classes)
    return IdAdapter(kind)


class _OptionalAdapter(cs.Adapter):  # type: ignore[misc]  # construct has no type information
    def _decode(self, obj: Any, context: Any, path: Any) -> Any:
        if obj.present not in (0, 1):
            raise cs.ValidationError("presence byte must be 0 or 1", path=path)
        return obj.value if obj.present else None

    def _encode(self, obj: Any, context: Any, path: Any) -> dict[str, Any]:
        return {"present": int(obj is not None), "value": obj}


def OptionalId(kind: IdKind) -> cs.Construct:  # noqa: N802
    """An ID or nothing: a presence byte (0 or 1, nothing else), then the ID if present.

    The byte is always there: without it, whatever follows an absent ID could be read as one.
    """
    return _OptionalAdapter(cs.Struct("present" / cs.Int8ub, "value" / cs.If(cs.this.present == 1, IdField(kind))))


def Blob(width: cs.Construct = cs.Int16ub) -> cs.Construct:  # noqa: N802
    """Length-prefixed opaque bytes (a wrapped key, a DER certificate, ...)."""
    return cs.Prefixed(width, cs.GreedyBytes)


def Text(width: cs.Construct = cs.Int16ub) -> cs.Construct:  # noqa: N802
    return cs.PascalString(width, "utf8")


_PARSE_ERRORS = (cs.ConstructError, UnicodeError, ValueError, OverflowError, KeyError, IdError)


def parse(schema: cs.Construct, data: bytes, *, path: object, what: str) -> Any:
    """Parse ``data`` with ``schema``; any failure becomes one :class:`ImageError` line."""
    try:
        return schema.parse(data)
    except _PARSE_ERRORS as exc:
        raise ImageError(path, f"corrupt {what} ({_short(exc)})") from None


def build(schema: cs.Construct, obj: Any, *, what: str) -> bytes:
    try:
        return bytes(schema.build(obj))
    except _PARSE_ERRORS as exc:  # a bug or a value that does not fit, e.g. a name too long
        raise ImageError(what, f"cannot be written: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


EnvelopeHeader = cs.Struct(
    "magic" / cs.Bytes(8),
    "version" / cs.Int16ub,
    "length" / cs.Int32ub,
)
ENVELOPE_OVERHEAD = EnvelopeHeader.sizeof() + DIGEST_SIZE


def seal_envelope(magic: bytes, version: int, body: bytes) -> bytes:
    head = bytes(EnvelopeHeader.build({"magic": magic, "version": version, "length": len(body)}))
    return head + body + hashlib.sha256(head + body).digest()


def open_envelope(data: bytes, *, magic: bytes, version: int, path: object, what: str) -> bytes:
    """Check an envelope's magic, version, length and digest; return its body."""
    if len(data) < EnvelopeHeader.sizeof() or data[:8] != magic:
        if len(data) == 0:
            raise ImageError(path, f"empty file, not a {what}")
        if magic.startswith(data[:8]) and len(data) < 8:
            raise ImageError(path, f"truncated {what} ({len(data)} bytes)")
        raise ImageError(path, f"not a {what} (unknown format)")
    head = EnvelopeHeader.parse(data)
    if head.version != version:
        raise version_error(path, what, head.version, version)
    expected = EnvelopeHeader.sizeof() + head.length + DIGEST_SIZE
    if len(data) < expected:
        raise ImageError(path, f"truncated {what} ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise ImageError(path, f"{what} has {len(data) - expected} unexpected trailing bytes")
    end = EnvelopeHeader.sizeof() + head.length
    if hashlib.sha256(data[:end]).digest() != data[end:]:
        raise IntegrityError(path, f"{what} is damaged or was modified (checksum mismatch)")
    return data[EnvelopeHeader.sizeof() : end]


def version_error(path: object, what: str, found: int, supported: int) -> ImageError:
    """A device file of another format version: an older one is made again, a newer one needs a
    newer vhw. One line either way."""
    if found < supported:
        return ImageError(
            path,
            f"{what} format version {found} is no longer supported (this vhw reads {supported}): make the {what} again",
        )
    return ImageError(path, f"{what} format version {found} is not supported (this vhw reads {supported})")


@dataclass(frozen=True, order=True)
class Extent:
    """A run of bytes in a device image: where, and how long."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


BLOCK_SIZE = 4096  # one device block: fixed areas (disc header, MID area, HDD superblocks) each own one


def seal_block(body: bytes, *, size: int = BLOCK_SIZE) -> bytes:
    """A fixed-size block: ``body`` zero-padded, then the SHA-256 of all that comes before."""
    room = size - DIGEST_SIZE
    if len(body) > room:
        raise ValueError(f"block body of {len(body)} bytes does not fit in {room}")
    padded = body + bytes(room - len(body))
    return padded + hashlib.sha256(padded).digest()


def open_block(block: bytes, *, path: object, what: str, size: int = BLOCK_SIZE) -> bytes:
    """Check a block made by :func:`seal_block`; return its padded body."""
    if len(block) < size:
        raise ImageError(path, f"truncated {what} ({len(block)} of {size} bytes)")
    room = size - DIGEST_SIZE
    if hashlib.sha256(block[:room]).digest() != block[room:size]:
        raise IntegrityError(path, f"{what} is damaged or was modified (checksum mismatch)")
    return block[:room]


TITLE_ID_RE = re.compile(r"[A-Z0-9][A-Z0-9._-]{1,31}")


def valid_title_id(text: str) -> bool:
    """Title IDs are 2-32 of A-Z 0-9 . _ - (like SLUS-20062), so they fit in paths and labels."""
    return TITLE_ID_RE.fullmatch(text) is not None


def valid_relpath(path: str) -> bool:
    """A file's path inside a title: relative, '/'-separated, no '.', '..' or empty parts."""
    if not path or len(path.encode()) > 1024 or "\0" in path or "\\" in path:
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") and len(p.encode()) <= 255 for p in parts)


def record(obj: Any, **more: Any) -> dict[str, Any]:
    """A dataclass's fields by name, and ``more``, for :func:`build` (a schema takes the names it
    declares and passes over the others)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} | more


def from_record(cls: type[D], rec: Any, **more: Any) -> D:
    """A dataclass from a parsed record: each field the record's entry of its name, unless ``more``
    gives it."""
    return cls(**{f.name: rec[f.name] for f in dataclasses.fields(cls) if f.name not in more}, **more)  # type: ignore[arg-type]
