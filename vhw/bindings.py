"""What every wrapped item is bound to, and the key ladder that ties titles to the devices.

The console and the server both derive these from the same IDs, so an item wrapped for one card,
user, MID or title opens only as exactly that item. A Content-Key captured from one card's
acquisition does not unwrap on another card, nor as another MID's key on the same card; sealed
device IDs open only for the user whose Content-Gen-Key sealed them.

    item                      wrapped with                     bound to
    User ID                   MC-Key                           MC-ID
    MID (sent and stored)     MC-Key                           MC-ID, User ID
    Content-Key               MC-Key, then sealed to the       MC-ID, MID, title ID;
                              console and to the HDD           + Client ID, HDD-ID
    Content-Gen-Key           MC-Key, then sealed to the       MC-ID, User ID;
                              console and to the HDD           + Client ID, HDD-ID
    Client ID + HDD-ID        Content-Gen-Key                  User ID
    an installed title        TitleBinding (Content-Gen-Key    User ID, Client ID, HDD-ID,
                              + console secret + HDD secret)   title ID, salt
    any key at rest (server)  master key                       table, row ID

Why two layers for the issued keys: every device is a file its holder can read byte for byte, and
the card file holds its MC-Key. If the MC-Key alone opened the Content-Gen-Key, a lent card would
hand over everything. So the server also seals what it issues (HPKE, :func:`vhw.crypto.seal_to`)
to the public keys registered for the user entry's console and HDD: only those two devices'
secrets, together with the card's MC-Key, open it. And the key a title is re-encrypted under on
the HDD is derived from the Content-Gen-Key *and* both device secrets (:class:`TitleBinding`):
any two of card, console ROM and HDD decrypt nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import crypto
from .ids import Id, IdKind

OWNER_SIZE = 16  # bytes of the fingerprints that tell whose a title is


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


def owner_of(content_gen_key: bytes) -> bytes:
    """A fingerprint of a Content-Gen-Key that tells one user from another, revealing nothing:
    card tokens name it, and the HDD keeps the highest card epoch it has seen per owner."""
    return crypto.derive(content_gen_key, crypto.context("hdd-owner"), length=OWNER_SIZE)


# -- device IDs sealed with the Content-Gen-Key (S16, checked at S23/S33) -----------------------


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


def card_user(mc_key: bytes, mc_id: Id, wrapped_user: bytes) -> Id | None:
    """The User ID a card holds, unwrapped with its MC-Key: None when it holds none (not
    registered yet), :class:`crypto.Invalid` when it does not open (a damaged card)."""
    if not wrapped_user:
        return None
    return unwrap_id(mc_key, wrapped_user, IdKind.USER, user_id(mc_id))


def wrap_id(kek: bytes, ident: Id, ad: bytes) -> bytes:
    return crypto.wrap(kek, ident.to_bytes(), ad)


def unwrap_id(kek: bytes, blob: bytes, kind: IdKind, ad: bytes) -> Id:
    data = crypto.unwrap(kek, blob, ad)
    try:
        return Id.from_bytes(kind, data)
    except Exception:
        raise crypto.Invalid() from None


# -- keys issued for one console and one HDD (S15) --------------------------------------------------


@dataclass(frozen=True)
class DevicePublic:
    """The public keys the manufacturer registered for a user entry's console and HDD."""

    client_id: Id
    hdd_id: Id
    console: bytes
    hdd: bytes


@dataclass(frozen=True)
class DeviceSecrets:
    """What a console knows of its own hardware: its Client ID and the secret in its ROM, the
    attached HDD's HDD-ID and the secret in its superblock."""

    client_id: Id
    hdd_id: Id
    console: bytes = field(repr=False)
    hdd: bytes = field(repr=False)

    def public(self) -> DevicePublic:
        return DevicePublic(
            self.client_id, self.hdd_id, crypto.device_public(self.console), crypto.device_public(self.hdd)
        )


def _device_info(purpose: str, client_id: Id, hdd_id: Id, ad: bytes) -> bytes:
    return crypto.context("device-sealed", purpose, client_id, hdd_id, ad)


def seal_for_devices(devices: DevicePublic, purpose: str, wrapped: bytes, ad: bytes) -> bytes:
    """Seal an MC-Key-wrapped item to the HDD, then the result to the console (server side).

    ``ad`` is the item's own binding (e.g. :func:`content_key`); the seals add the devices'
    IDs, so an item sealed for one console and HDD names them as well as its card and MID."""
    info = _device_info(purpose, devices.client_id, devices.hdd_id, ad)
    return crypto.seal_to(devices.console, crypto.seal_to(devices.hdd, wrapped, info), info)


def open_on_devices(devices: DeviceSecrets, purpose: str, blob: bytes, ad: bytes) -> bytes:
    """The MC-Key-wrapped item inside :func:`seal_for_devices`, or :class:`crypto.Invalid`."""
    info = _device_info(purpose, devices.client_id, devices.hdd_id, ad)
    return crypto.open_sealed(devices.hdd, crypto.open_sealed(devices.console, blob, info), info)


CONTENT_KEY = "content-key"
CONTENT_GEN_KEY = "content-gen-key"


def issue_content_key(devices: DevicePublic, mc_key: bytes, mc_id: Id, media: Id, title_id: str, key: bytes) -> bytes:
    ad = content_key(mc_id, media, title_id)
    return seal_for_devices(devices, CONTENT_KEY, crypto.wrap(mc_key, key, ad), ad)


def open_content_key(devices: DeviceSecrets, mc_key: bytes, mc_id: Id, media: Id, title_id: str, blob: bytes) -> bytes:
    ad = content_key(mc_id, media, title_id)
    return crypto.unwrap(mc_key, open_on_devices(devices, CONTENT_KEY, blob, ad), ad)


def issue_content_gen_key(devices: DevicePublic, mc_key: bytes, mc_id: Id, user: Id, key: bytes) -> bytes:
    ad = content_gen_key(mc_id, user)
    return seal_for_devices(devices, CONTENT_GEN_KEY, crypto.wrap(mc_key, key, ad), ad)


def open_content_gen_key(devices: DeviceSecrets, mc_key: bytes, mc_id: Id, user: Id, blob: bytes) -> bytes:
    ad = content_gen_key(mc_id, user)
    return crypto.unwrap(mc_key, open_on_devices(devices, CONTENT_GEN_KEY, blob, ad), ad)


# -- installed titles (S24-S26, S34) ------------------------------------------------------------------


@dataclass(frozen=True)
class TitleBinding:
    """The key every title a user installs on one HDD from one console is re-encrypted under.

    HKDF over the Content-Gen-Key and both device secrets, bound to the User ID, Client ID and
    HDD-ID: it takes the card (through the Content-Gen-Key it opens on these devices), this
    console's ROM and this HDD to compute. Each title's key is derived from it with the title ID
    and a random salt kept in the HDD catalog; :attr:`owner` is the fingerprint the catalog keeps
    to tell which titles a binding opens, revealing nothing of it.
    """

    key: bytes = field(repr=False)

    @classmethod
    def derive(cls, content_gen_key: bytes, user: Id, devices: DeviceSecrets) -> TitleBinding:
        ikm = content_gen_key + devices.console + devices.hdd
        return cls(crypto.derive(ikm, crypto.context("title-binding", user, devices.client_id, devices.hdd_id)))

    @property
    def owner(self) -> bytes:
        return crypto.derive(self.key, crypto.context("title-binding-owner"), length=OWNER_SIZE)

    def title_key(self, title_id: str, salt: bytes) -> bytes:
        """The key one title is re-encrypted under on this HDD (S25)."""
        return crypto.derive(self.key, crypto.context("hdd-title-key", title_id), salt=salt)


def title_tag(title_key: bytes, title_id: str, entry: str, kind: str, title_digest: bytes, metadata: bytes) -> bytes:
    """What authenticates an installed title's catalog entry: its entry point, kind, title digest
    and metadata (which may ask for the network) under a key derived from the title's own key. The
    catalog itself is protected by a
    checksum only, which whoever holds the HDD file can recompute; this tag only the title's
    owner (card + console + HDD) can make, so ``play`` runs the entry the disc named."""
    key = crypto.derive(title_key, crypto.context("title-entry-tag-key"))
    return crypto.mac(key, crypto.context("title-entry", title_id, entry, kind, title_digest, metadata))


def registration_proof(mc_key: bytes, mc_id: Id, client_id: Id, hdd_id: Id) -> bytes:
    """Proof that the registering console holds the card (S2): an HMAC under a key derived from
    the MC-Key, so the MC-Key itself never travels and a card's label alone registers nothing."""
    key = crypto.derive(mc_key, crypto.context("registration-proof-key"))
    return crypto.mac(key, crypto.context("register", mc_id, client_id, hdd_id))


# -- proof of the disc (S12) ----------------------------------------------------------------------
#
# A MID is printed on its disc's label: knowing it proves nothing. Each pressed disc carries a
# secret of its own (an Ed25519 key in its MID area, :mod:`vhw.formats.disc`) whose public half
# the publisher registered with the MID. An acquisition signs what it asks for with that secret:
# the MID, the user, the card, the devices and the title digest. A signature made for one user's
# request opens nothing for anyone else, and the server checks it before it flags the MID.


def disc_proof_message(media: Id, user: Id, mc_id: Id, client_id: Id, hdd_id: Id, title_digest: bytes) -> bytes:
    return crypto.context("disc-proof", media, user, mc_id, client_id, hdd_id, title_digest)


def disc_proof(
    disc_secret: bytes, media: Id, user: Id, mc_id: Id, client_id: Id, hdd_id: Id, title_digest: bytes
) -> bytes:
    """The console's proof that it holds the disc: a signature with the disc's own secret."""
    message = disc_proof_message(media, user, mc_id, client_id, hdd_id, title_digest)
    return crypto.signing_key_from(disc_secret).sign(message)


def check_disc_proof(
    disc_key: bytes, proof: bytes, media: Id, user: Id, mc_id: Id, client_id: Id, hdd_id: Id, title_digest: bytes
) -> None:
    """The server's check of :func:`disc_proof` against the key registered with the MID, or
    :class:`crypto.Invalid`."""
    crypto.verify(disc_key, proof, disc_proof_message(media, user, mc_id, client_id, hdd_id, title_digest))


# -- card tokens --------------------------------------------------------------------------------
#
# A card token says "for the user whose Content-Gen-Key has this fingerprint, the card with this
# MC-ID is the current one, epoch N", signed with the platform's signing key (a key of its own,
# certified by the CA; console ROMs pin its certificate beside the CA). Reissuing a card raises
# the epoch. A console checks the signature against the certificate in its ROM, and the HDD remembers the
# highest epoch it has seen per user: once a reissued card has been used, the old one is refused
# offline too. The old card's holder cannot sign.

EPOCH_BYTES = 4


def card_token_message(owner: bytes, mc_id: Id, epoch: int) -> bytes:
    return crypto.context("card-token", owner, mc_id, epoch)


def make_card_token(sign: crypto.Signer, owner: bytes, mc_id: Id, epoch: int) -> bytes:
    return epoch.to_bytes(EPOCH_BYTES, "big") + sign(card_token_message(owner, mc_id, epoch))


def open_card_token(anchor_der: bytes, token: bytes, owner: bytes, mc_id: Id) -> int:
    """The epoch of a valid token for this owner and card, or :class:`crypto.Invalid`."""
    if len(token) <= EPOCH_BYTES or not anchor_der:
        raise crypto.Invalid()
    epoch = int.from_bytes(token[:EPOCH_BYTES], "big")
    crypto.ecdsa_verify(anchor_der, token[EPOCH_BYTES:], card_token_message(owner, mc_id, epoch))
    return epoch
