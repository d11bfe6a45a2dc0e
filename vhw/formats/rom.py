"""The console ROM (the patent's MASK-ROM 35): who this console is and whom it trusts.

Burned once at the factory and never written again. It holds the Client ID printed on the
console's label, the hardware IDs the IOP uses to recognise what is plugged in (FIG. 3), the
platform's trust anchor (the only CA whose server certificate the console accepts), the
default address of the licensing server, and the console's secret: an X25519 private key made at
manufacture, never shown and never sent, whose public key the manufacturer registers with the
server. Keys the server issues are sealed to it, and installed titles are bound to it
(:mod:`vhw.bindings`).

Version 2 added the secret; a version 1 ROM is refused with a line that says to make it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import construct as cs

from .. import crypto
from ..ids import Id, IdKind
from .common import Blob, IdField, Text, build, from_record, open_envelope, parse, record, seal_envelope

__all__ = ["VERSION", "WHAT", "Rom", "decode", "encode"]


MAGIC = b"VHWROM\0\0"
VERSION = 3  # 3: the platform's signing certificate (card tokens) pinned beside the CA
WHAT = "console ROM"

#: Hardware IDs: one per kind of part, the same for every unit of a model (the patent's
#: "Hardware ID ... one overall ID for client terminal device 1, one ID for memory card 16...").
HARDWARE_IDS = {
    "console": 0x5648_5701,
    "controller": 0x5648_5702,
    "memory-card": 0x5648_5703,
    "hdd": 0x5648_5704,
    "card-connector": 0x5648_5705,
}

RomBody = cs.Struct(
    "client_id" / IdField(IdKind.CLIENT),
    "secret" / cs.Bytes(crypto.DEVICE_SECRET_SIZE),  # X25519 private key: never shown, never sent
    "model" / Text(cs.Int8ub),
    "manufactured" / cs.Int64ub,  # seconds since the epoch
    "hardware_ids" / cs.PrefixedArray(cs.Int8ub, cs.Struct("part" / Text(cs.Int8ub), "id" / cs.Int32ub)),
    "server_url" / Text(cs.Int16ub),
    "trust_anchor" / Blob(cs.Int32ub),  # DER of the platform CA certificate; empty: none yet
    "token_anchor" / Blob(cs.Int32ub),  # DER of the platform's signing certificate (card tokens)
)


@dataclass(frozen=True)
class Rom:
    client_id: Id
    manufactured: int
    secret: bytes = field(repr=False)  # never in a repr, a log line or an `info`
    model: str = "VHW-1000"
    server_url: str = ""
    trust_anchor: bytes = b""  # DER
    token_anchor: bytes = b""  # DER of the certificate whose key signs card tokens
    hardware_ids: dict[str, int] = field(default_factory=lambda: dict(HARDWARE_IDS))

    @property
    def public_key(self) -> bytes:
        return crypto.device_public(self.secret)


def encode(rom: Rom) -> bytes:
    hardware_ids = [{"part": k, "id": v} for k, v in rom.hardware_ids.items()]
    return seal_envelope(MAGIC, VERSION, build(RomBody, record(rom, hardware_ids=hardware_ids), what=WHAT))


def decode(data: bytes, *, path: object = WHAT) -> Rom:
    body = open_envelope(data, magic=MAGIC, version=VERSION, path=path, what=WHAT)
    rec = parse(RomBody, body, path=path, what=WHAT)
    return from_record(Rom, rec, hardware_ids={h.part: h.id for h in rec.hardware_ids})
