"""What every wrapped item is bound to: the associated data of each key and ID the flows wrap.

The console and the server both derive these from the same IDs, so an item wrapped for one card,
user, MID or title opens only as exactly that item. A Content-Key captured from one card's
acquisition does not unwrap on another card, nor as another MID's key on the same card; sealed
device IDs open only for the user whose Content-Gen-Key sealed them.

    item                      wrapped with       bound to
    User ID                   MC-Key             MC-ID
    MID (sent and stored)     MC-Key             MC-ID, User ID
    Content-Key               MC-Key             MC-ID, MID, title ID
    Content-Gen-Key           MC-Key             MC-ID, User ID
    Client ID + HDD-ID        Content-Gen-Key    User ID
    any key at rest (server)  master key         table, row ID
"""

from __future__ import annotations

import hashlib
import hmac

from . import crypto
from .ids import Id, IdKind


def user_id(mc_id: Id) -> bytes:
    return crypto.context("user-id", mc_id)


def mid(mc_id: Id, user: Id) -> bytes:
    return crypto.context("mid", mc_id, user)


def content_key(mc_id: Id, media: Id | str, title_id: str) -> bytes:
    return crypto.context("content-key", mc_id, media, title_id)


def content_gen_key(mc_id: Id, user: Id) -> bytes:
    return crypto.context("content-gen-key", mc_id, user)


def sealed_ids(user: Id) -> bytes:
    return crypto.context("sealed-ids", user)


def at_rest(table: str, row: object) -> bytes:
    return crypto.context("at-rest", table, row)


def seal_device_ids(content_gen_key: bytes, user: Id, client_id: Id, hdd_id: Id) -> bytes:
    return crypto.wrap(content_gen_key, client_id.to_bytes() + hdd_id.to_bytes(), sealed_ids(user))


def open_device_ids(content_gen_key: bytes, user: Id, blob: bytes) -> tuple[Id, Id]:
    """The Client ID and HDD-ID sealed for ``user``, or :class:`crypto.Invalid`."""
    data = crypto.unwrap(content_gen_key, blob, sealed_ids(user))
    n = IdKind.CLIENT.nbytes
    if len(data) != n + IdKind.HDD.nbytes:
        raise crypto.Invalid()
    try:
        return Id.from_bytes(IdKind.CLIENT, data[:n]), Id.from_bytes(IdKind.HDD, data[n:])
    except Exception:
        raise crypto.Invalid() from None


def wrap_id(kek: bytes, ident: Id, ad: bytes) -> bytes:
    return crypto.wrap(kek, ident.to_bytes(), ad)


def unwrap_id(kek: bytes, blob: bytes, kind: IdKind, ad: bytes) -> Id:
    data = crypto.unwrap(kek, blob, ad)
    try:
        return Id.from_bytes(kind, data)
    except Exception:
        raise crypto.Invalid() from None


def registration_proof(mc_key: bytes, mc_id: Id, client_id: Id, hdd_id: Id) -> bytes:
    """Proof that the registering console holds the card (S2): an HMAC under a key derived from
    the MC-Key, so the MC-Key itself never travels and a card's label alone registers nothing."""
    key = crypto.derive(mc_key, crypto.context("registration-proof-key"))
    return hmac.new(key, crypto.context("register", mc_id, client_id, hdd_id), hashlib.sha256).digest()


# -- card tokens --------------------------------------------------------------------------------
#
# A card token says "for the user whose Content-Gen-Key has this fingerprint, the card with this
# MC-ID is the current one, epoch N", signed with the platform CA's key. Reissuing a card raises
# the epoch. A console checks the signature against the CA in its ROM, and the HDD remembers the
# highest epoch it has seen per user: once a reissued card has been used, the old one is refused
# offline too. The old card's holder knows the Content-Gen-Key but cannot sign.

EPOCH_BYTES = 4


def card_token_message(owner: bytes, mc_id: Id, epoch: int) -> bytes:
    return crypto.context("card-token", owner, mc_id, epoch)


def make_card_token(sign, owner: bytes, mc_id: Id, epoch: int) -> bytes:
    return epoch.to_bytes(EPOCH_BYTES, "big") + sign(card_token_message(owner, mc_id, epoch))


def open_card_token(anchor_der: bytes, token: bytes, owner: bytes, mc_id: Id) -> int:
    """The epoch of a valid token for this owner and card, or :class:`crypto.Invalid`."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if len(token) <= EPOCH_BYTES or not anchor_der:
        raise crypto.Invalid()
    epoch = int.from_bytes(token[:EPOCH_BYTES], "big")
    try:
        key = x509.load_der_x509_certificate(anchor_der).public_key()
        key.verify(token[EPOCH_BYTES:], card_token_message(owner, mc_id, epoch), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError, AttributeError):
        raise crypto.Invalid() from None
    return epoch
