"""The memory card (the patent's memory card 16): MC-ID, the secret MC-Key, and what flows store.

The manufacturer formats a card with a fresh MC-ID (printed on its label) and MC-Key (never shown,
never sent: the server has its own copy from the factory registration). The flows then store:

* ``user_id``: the User ID wrapped with the MC-Key (S6);
* ``licenses``: per disc, its MID wrapped with the MC-Key and, until the copy is complete, the
  Content-Key wrapped with the MC-Key, bound to this card, MID and title, and sealed to the user's
  console and HDD (S16, deleted at S28);
* ``content_gen_key``: the Content-Gen-Key wrapped with the MC-Key and sealed to the user's
  console and HDD (S16): the card alone opens neither key (:mod:`vhw.bindings`);
* ``sealed_ids``: Client ID + HDD-ID sealed with the Content-Gen-Key (S16), checked at S23/S33;
* ``card_token``: the server's signed statement of this card's epoch (a reissued card supersedes
  the old one; :mod:`vhw.bindings`).

All wrapping is done by the server or the console (:mod:`vhw.licensing`, :mod:`vhw.console`);
this module only lays the record out. Version 2: the issued keys are sealed to the devices; a
version 1 card is refused with a line that says to make it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import construct as cs

from ..crypto import KEY_SIZE
from ..ids import Id, IdKind
from .common import Blob, IdField, Text, build, open_envelope, parse, seal_envelope

MAGIC = b"VHWCARD\0"
VERSION = 2
WHAT = "memory card"
MAX_LICENSES = 1024  # a card's capacity in discs; far above what one user installs at once

LicenseRecord = cs.Struct(
    "title_id" / Text(cs.Int8ub),
    "mid" / Blob(),  # wrapped MID
    "content_key" / Blob(),  # wrapped Content-Key, empty once the copy is complete
    "acquired" / cs.Int64ub,
)

CardBody = cs.Struct(
    "mc_id" / IdField(IdKind.CARD),
    "mc_key" / cs.Bytes(KEY_SIZE),
    "formatted" / cs.Int64ub,
    "user_id" / Blob(),
    "content_gen_key" / Blob(),
    "sealed_ids" / Blob(),
    "card_token" / Blob(),
    "licenses" / cs.PrefixedArray(cs.Int16ub, LicenseRecord),
)


@dataclass(frozen=True)
class License:
    title_id: str
    mid: bytes  # wrapped
    content_key: bytes = b""  # wrapped; b"" once installed
    acquired: int = 0


@dataclass(frozen=True)
class Card:
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

    def without_content_key(self, mid: bytes) -> Card:
        return replace(
            self,
            licenses=tuple(
                replace(x, content_key=b"") if x.mid == mid else x for x in self.licenses
            ),
        )


def encode(card: Card) -> bytes:
    if len(card.licenses) > MAX_LICENSES:
        raise ValueError("memory card is full")
    body = build(
        CardBody,
        {
            "mc_id": card.mc_id,
            "mc_key": card.mc_key,
            "formatted": card.formatted,
            "user_id": card.user_id,
            "content_gen_key": card.content_gen_key,
            "sealed_ids": card.sealed_ids,
            "card_token": card.card_token,
            "licenses": [
                {"title_id": x.title_id, "mid": x.mid, "content_key": x.content_key, "acquired": x.acquired}
                for x in card.licenses
            ],
        },
        what=WHAT,
    )
    return seal_envelope(MAGIC, VERSION, body)


def decode(data: bytes, *, path: object = WHAT) -> Card:
    body = open_envelope(data, magic=MAGIC, version=VERSION, path=path, what=WHAT)
    rec = parse(CardBody, body, path=path, what=WHAT)
    return Card(
        mc_id=rec.mc_id,
        mc_key=rec.mc_key,
        formatted=rec.formatted,
        user_id=rec.user_id,
        content_gen_key=rec.content_gen_key,
        sealed_ids=rec.sealed_ids,
        card_token=rec.card_token,
        licenses=tuple(
            License(x.title_id, x.mid, x.content_key, x.acquired) for x in rec.licenses
        ),
    )
