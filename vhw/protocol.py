"""The licensing protocol's messages, free of I/O (as h11 keeps HTTP free of sockets).

Each message is a frozen dataclass whose fields declare how they travel in JSON: IDs as their
labels, binary values as base64 with a size bound, text with a length bound. :func:`decode`
accepts exactly the declared fields with the declared types and raises :class:`ProtocolError`
naming the first field that is wrong; :func:`encode` is its inverse. The server, the client, the
broker and the in-memory tests all speak through these two functions, and the OpenAPI document
(``vhw/openapi.json``) is generated from the same declarations (:func:`schema`).

Endpoints (all POST with a JSON body, except health):

    /v1/health                          GET, anyone
    /v1/console/{register,acquire,confirm}   consoles (direct mode only)
    /v1/broker/{register,acquire,confirm}    the broker, relaying for its users
    /v1/manufacturer/{consoles,hdds,cards}   the manufacturer
    /v1/publisher/{titles,media}            the publisher
    /v1/operator/...                     the repair center
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import IdError
from .ids import Id, IdKind

M = TypeVar("M")  # a message class
MAX_BODY = 64 * 1024  # bytes: the largest request any endpoint accepts


class ProtocolError(Exception):
    """A request or response does not have the declared shape. The message names the field."""


# -- field codecs ---------------------------------------------------------------------------------


class Codec:
    json_schema: dict[str, Any] = {}

    def decode(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value


class IdCodec(Codec):
    def __init__(self, kind: IdKind):
        self.kind = kind
        self.json_schema = {
            "type": "string",
            "description": f"{kind.title} label, e.g. {kind.prefix}-...",
            "maxLength": 40,
            "pattern": f"^{kind.prefix}-",
        }

    def decode(self, value: Any, name: str) -> Any:
        if not isinstance(value, str) or len(value) > 40:
            raise ProtocolError(f"{name}: must be a {self.kind.title} label")
        try:
            return Id.parse(value, self.kind)
        except IdError as exc:
            raise ProtocolError(f"{name}: {exc}") from None

    def encode(self, value: Any) -> Any:
        return str(value)


class BytesCodec(Codec):
    def __init__(self, *, min_size: int = 0, max_size: int = 256):
        self.min_size, self.max_size = min_size, max_size
        self.json_schema = {"type": "string", "format": "byte", "maxLength": 4 * (-(-max_size // 3))}
        if min_size:
            self.json_schema["minLength"] = 4 * (min_size // 3)

    def decode(self, value: Any, name: str) -> Any:
        if not isinstance(value, str) or len(value) > 4 * (-(-self.max_size // 3)) + 4:
            raise ProtocolError(f"{name}: must be base64 of at most {self.max_size} bytes")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{name}: not valid base64") from None
        if not self.min_size <= len(data) <= self.max_size:
            raise ProtocolError(f"{name}: must hold {self.min_size}..{self.max_size} bytes")
        return data

    def encode(self, value: Any) -> Any:
        return base64.b64encode(value).decode()


class TextCodec(Codec):
    def __init__(self, *, max_len: int = 200, pattern: str | None = None):
        self.max_len = max_len
        self.pattern = re.compile(pattern) if pattern else None
        self.json_schema = {"type": "string", "maxLength": max_len}
        if pattern:
            self.json_schema["pattern"] = f"^{pattern}$"

    def decode(self, value: Any, name: str) -> Any:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise ProtocolError(f"{name}: must be text of at most {self.max_len} characters")
        if self.pattern and not self.pattern.fullmatch(value):
            raise ProtocolError(f"{name}: {value[:40]!r} is not valid here")
        return value


class IntCodec(Codec):
    def __init__(self, *, minimum: int = 0, maximum: int = 2**53):
        self.minimum, self.maximum = minimum, maximum
        self.json_schema = {"type": "integer", "minimum": minimum, "maximum": maximum}

    def decode(self, value: Any, name: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not self.minimum <= value <= self.maximum:
            raise ProtocolError(f"{name}: must be an integer in {self.minimum}..{self.maximum}")
        return value


class BoolCodec(Codec):
    json_schema = {"type": "boolean"}

    def decode(self, value: Any, name: str) -> Any:
        if not isinstance(value, bool):
            raise ProtocolError(f"{name}: must be true or false")
        return value


class ListCodec(Codec):
    def __init__(self, item: Codec, *, max_items: int):
        self.item, self.max_items = item, max_items
        self.json_schema = {"type": "array", "items": item.json_schema, "maxItems": max_items}

    def decode(self, value: Any, name: str) -> Any:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise ProtocolError(f"{name}: must be a list of at most {self.max_items} items")
        return tuple(self.item.decode(v, f"{name}[{i}]") for i, v in enumerate(value))

    def encode(self, value: Any) -> Any:
        return [self.item.encode(v) for v in value]


class OptionalCodec(Codec):
    def __init__(self, inner: Codec):
        self.inner = inner
        self.json_schema = {**inner.json_schema, "nullable": True}

    def decode(self, value: Any, name: str) -> Any:
        return None if value is None else self.inner.decode(value, name)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)


class MessageCodec(Codec):
    """A nested message (decoded with :func:`decode`)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.json_schema = {"$ref": f"#/components/schemas/{cls.__name__}"}

    def decode(self, value: Any, name: str) -> Any:
        try:
            return decode(self.cls, value)
        except ProtocolError as exc:
            raise ProtocolError(f"{name}.{exc}") from None

    def encode(self, value: Any) -> Any:
        return encode(value)


def f(codec: Codec, default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """Declare a message field with its codec (and optionally a default, making it optional)."""
    meta = {"codec": codec, "doc": doc}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


TITLE_ID_PATTERN = r"[A-Z0-9][A-Z0-9._-]{1,31}"
WRAPPED = BytesCodec(min_size=28, max_size=128)  # nonce + tag + a 32-byte key or an ID
# a wrapped key sealed to an HDD and then to a console: two HPKE layers (encapsulated key + tag)
DEVICE_SEALED = BytesCodec(min_size=28 + 2 * 48, max_size=256)
KEY = BytesCodec(min_size=32, max_size=32)
PUBLIC_KEY = BytesCodec(min_size=32, max_size=32)  # a device's X25519 public key
DIGEST = BytesCodec(min_size=32, max_size=32)
TOKEN = BytesCodec(min_size=40, max_size=160)  # epoch + ECDSA P-256 signature (DER)
SIGNATURE = BytesCodec(min_size=64, max_size=64)  # Ed25519

# -- messages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterRequest:
    """S2: the console sends its card's MC-ID, its Client ID and HDD-ID, and a proof that it holds
    the card's MC-Key (an HMAC under a key derived from it; the MC-Key itself is never sent)."""

    mc_id: Id = f(IdCodec(IdKind.CARD))
    client_id: Id = f(IdCodec(IdKind.CLIENT))
    hdd_id: Id = f(IdCodec(IdKind.HDD))
    proof: bytes = f(BytesCodec(min_size=32, max_size=32))


@dataclass(frozen=True)
class RegisterResponse:
    """S5: the User ID, wrapped with the card's MC-Key."""

    user_id: bytes = f(WRAPPED)


@dataclass(frozen=True)
class AcquireRequest:
    """S12: MC-ID, the User ID and the disc's MID wrapped with the MC-Key, and the device IDs;
    the title digest of the disc in the tray, and the proof that the console holds that disc: a
    signature with the disc's own secret over the MID, the user, the card, the devices and the
    title digest (:func:`vhw.bindings.disc_proof_message`). The server checks it against the key
    registered with the MID before it flags anything; a label alone gets nothing. Null only for
    a license bought for a disc without a MID (nothing to prove: it is paid for)."""

    mc_id: Id = f(IdCodec(IdKind.CARD))
    user_id: bytes = f(WRAPPED)
    mid: bytes = f(WRAPPED)
    client_id: Id = f(IdCodec(IdKind.CLIENT))
    hdd_id: Id = f(IdCodec(IdKind.HDD))
    title_digest: bytes = f(DIGEST)
    disc_proof: bytes | None = f(OptionalCodec(SIGNATURE))


@dataclass(frozen=True)
class AcquireResponse:
    """S15: the Content-Key and Content-Gen-Key wrapped with the MC-Key and sealed to the user
    entry's HDD and console (their registered public keys), and the Client ID and HDD-ID of the
    user entry sealed with the Content-Gen-Key. ``title_digest`` lets the console
    check that the disc it installs from is the one the publisher registered."""

    title_id: str = f(TextCodec(max_len=32, pattern=TITLE_ID_PATTERN))
    title_digest: bytes = f(DIGEST)
    content_key: bytes = f(DEVICE_SEALED)
    content_gen_key: bytes = f(DEVICE_SEALED)
    sealed_ids: bytes = f(WRAPPED)
    card_token: bytes = f(TOKEN)


@dataclass(frozen=True)
class BrokerAcquireResponse(AcquireResponse):
    """What the server tells the broker: the console's answer, and whether this issue flagged the
    MID just now (the broker charges for that one only; a refetch after a lost answer is free)."""

    first_issue: bool = f(BoolCodec(), True)


@dataclass(frozen=True)
class PurchaseRequest(AcquireRequest):
    """FIG. 15, a disc pressed without a MID: the console picks a fresh MID for the license it buys
    (kept on its card before asking, so that a retry after a lost answer asks for the same one)."""

    title_id: str = f(TextCodec(max_len=32, pattern=TITLE_ID_PATTERN))


@dataclass(frozen=True)
class ConfirmRequest(AcquireRequest):
    """S28: the copy is complete; the MID's flag becomes final and its keys are never sent again.
    The same fields as an acquisition."""


@dataclass(frozen=True)
class Done:
    """A request that changes state succeeded; ``created`` is false when it was already done."""

    created: bool = f(BoolCodec(), True)


@dataclass(frozen=True)
class RegisterConsole:
    """A console's Client ID and the public key of the secret in its ROM."""

    client_id: Id = f(IdCodec(IdKind.CLIENT))
    public_key: bytes = f(PUBLIC_KEY)


@dataclass(frozen=True)
class RegisterHdd:
    """An HDD's HDD-ID and the public key of the secret in its superblock."""

    hdd_id: Id = f(IdCodec(IdKind.HDD))
    public_key: bytes = f(PUBLIC_KEY)


@dataclass(frozen=True)
class RegisterCard:
    """The factory's copy of a card's MC-Key: the only time it ever travels."""

    mc_id: Id = f(IdCodec(IdKind.CARD))
    mc_key: bytes = f(KEY)


@dataclass(frozen=True)
class RegisterTitle:
    title_id: str = f(TextCodec(max_len=32, pattern=TITLE_ID_PATTERN))
    name: str = f(TextCodec(max_len=200))
    content_key: bytes = f(KEY)
    title_digest: bytes = f(DIGEST)


@dataclass(frozen=True)
class PressedDisc:
    """One pressed disc: its MID (printed on its label) and the public key of its own secret."""

    mid: Id = f(IdCodec(IdKind.MEDIA))
    disc_key: bytes = f(PUBLIC_KEY)


@dataclass(frozen=True)
class RegisterMedia:
    title_id: str = f(TextCodec(max_len=32, pattern=TITLE_ID_PATTERN))
    discs: tuple[PressedDisc, ...] = f(ListCodec(MessageCodec(PressedDisc), max_items=1000))


@dataclass(frozen=True)
class RepairRequest:
    """FIG. 13: a user's console or HDD was repaired or exchanged and has a new ID. The operator
    re-registers it in the user entry (found by the card's MC-ID); the old ID is retired. The
    user's MIDs stay flagged for that user alone, who installs them again from the discs onto the
    new devices; no one else ever can."""

    mc_id: Id = f(IdCodec(IdKind.CARD))
    new_client_id: Id | None = f(OptionalCodec(IdCodec(IdKind.CLIENT)), None)
    new_hdd_id: Id | None = f(OptionalCodec(IdCodec(IdKind.HDD)), None)


@dataclass(frozen=True)
class RepairResponse:
    reinstallable: int = f(IntCodec(), doc="discs the user may install again onto the new devices")


@dataclass(frozen=True)
class ReissueRequest:
    """FIG. 14: a damaged or lost card. The user's typed User ID finds the entry; the repair center
    made a new card (new MC-ID, new MC-Key); the old card is retired."""

    user_id: Id = f(IdCodec(IdKind.USER))
    new_mc_id: Id = f(IdCodec(IdKind.CARD))
    new_mc_key: bytes = f(KEY)


@dataclass(frozen=True)
class LicenseItem:
    title_id: str = f(TextCodec(max_len=32, pattern=TITLE_ID_PATTERN))
    mid: bytes = f(WRAPPED)


@dataclass(frozen=True)
class ReissueResponse:
    """Everything the new card holds: the User ID and Content-Gen-Key wrapped with the new MC-Key
    (the Content-Gen-Key sealed to the user's console and HDD as well),
    the unchanged device IDs re-sealed, a card token of the next epoch, and the user's licenses."""

    user_id: bytes = f(WRAPPED)
    content_gen_key: bytes = f(DEVICE_SEALED)
    sealed_ids: bytes = f(WRAPPED)
    card_token: bytes = f(TOKEN)
    licenses: tuple[LicenseItem, ...] = f(ListCodec(MessageCodec(LicenseItem), max_items=1000))


@dataclass(frozen=True)
class Health:
    status: str = f(TextCodec(max_len=20))
    mode: str = f(TextCodec(max_len=20))
    version: str = f(TextCodec(max_len=20))


#: The answer header with the digest of the CAs the service announces (vhw.pki.anchors_digest)
TRUST_HEADER = "x-vhw-trust"


@dataclass(frozen=True)
class Trust:
    """The platform CAs a console should trust (DER), and during a CA rollover the
    cross-certificates by which a CA it trusts vouches for the new one."""

    anchors: tuple[bytes, ...] = f(ListCodec(BytesCodec(min_size=1, max_size=4096), max_items=4))
    cross: tuple[bytes, ...] = f(ListCodec(BytesCodec(min_size=1, max_size=4096), max_items=4), ())


@dataclass(frozen=True)
class AuditQuery:
    after: int = f(IntCodec(), 0, "return entries with a sequence number above this")
    limit: int = f(IntCodec(minimum=1, maximum=1000), 100)


@dataclass(frozen=True)
class AuditEntry:
    seq: int = f(IntCodec())
    at: int = f(IntCodec())
    actor: str = f(TextCodec(max_len=100))
    action: str = f(TextCodec(max_len=50))
    subject: str = f(TextCodec(max_len=200))
    detail: str = f(TextCodec(max_len=1000))


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...] = f(ListCodec(MessageCodec(AuditEntry), max_items=1000))


@dataclass(frozen=True)
class AccountToken:
    """A broker's answer to a console that signed in with its account's name and password: the
    token it keeps and sends instead (it never keeps the password)."""

    account: str = f(TextCodec(max_len=64))
    token: str = f(TextCodec(max_len=100))


@dataclass(frozen=True)
class ErrorBody:
    """Every failure: ``error`` is a stable code, ``message`` one human line. Refusals carry one of
    the patent's five messages exactly."""

    error: str = f(TextCodec(max_len=50))
    message: str = f(TextCodec(max_len=500))


# -- encoding -----------------------------------------------------------------------------------------


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [x for x in dataclasses.fields(cls) if "codec" in x.metadata]


def decode(cls: type[M], obj: Any) -> M:
    """Build message ``cls`` from parsed JSON, or raise ProtocolError naming what is wrong."""
    if not isinstance(obj, dict):
        raise ProtocolError("the body must be a JSON object")
    fields = _fields(cls)
    known = {x.name for x in fields}
    extra = sorted(set(obj) - known)
    if extra:
        raise ProtocolError(f"unknown field {extra[0]!r}")
    values = {}
    for x in fields:
        if x.name not in obj:
            if x.default is dataclasses.MISSING:
                raise ProtocolError(f"{x.name}: missing")
            continue
        values[x.name] = x.metadata["codec"].decode(obj[x.name], x.name)
    return cls(**values)


def encode(msg: Any, as_type: type | None = None) -> dict[str, Any]:
    """The JSON of a message; ``as_type``: only the fields of that message type (an answer with
    more than an endpoint declares sends what it declares)."""
    return {x.name: x.metadata["codec"].encode(getattr(msg, x.name)) for x in _fields(as_type or type(msg))}


def schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a message, for the OpenAPI document."""
    fields = _fields(cls)
    props = {}
    for x in fields:
        s = dict(x.metadata["codec"].json_schema)
        if x.metadata.get("doc"):
            s["description"] = x.metadata["doc"]
        props[x.name] = s
    out = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "required": [x.name for x in fields if x.default is dataclasses.MISSING],
    }
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out
