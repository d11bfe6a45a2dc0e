"""What the console's CPU does in each flow, without I/O: build requests, check and store answers.

Functions take the memory card (:class:`~vhw.formats.card.Card`), the console's IDs and the
server's responses, and return requests or a new card. The emulated machine (:mod:`vhw.machine`)
reads and writes the files and talks to the server; the tests call these functions directly too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import bindings, crypto
from . import protocol as p
from .errors import CopyNotPermitted, ReproductionNotPermitted, ServerError, StateError
from .formats.card import Card, License
from .ids import Id, IdKind
from .volume import owner_of


def registration_request(card: Card, client_id: Id, hdd_id: Id) -> p.RegisterRequest:
    """S2: MC-ID, Client ID, HDD-ID, and the proof that this console holds the card."""
    proof = bindings.registration_proof(card.mc_key, card.mc_id, client_id, hdd_id)
    return p.RegisterRequest(card.mc_id, client_id, hdd_id, proof)


def accept_registration(card: Card, resp: p.RegisterResponse) -> tuple[Card, Id]:
    """S6: store the wrapped User ID on the card (after checking it opens with the MC-Key)."""
    try:
        user = bindings.unwrap_id(card.mc_key, resp.user_id, IdKind.USER, bindings.user_id(card.mc_id))
    except crypto.Invalid:
        raise ServerError("the server's answer does not open with this memory card") from None
    return replace(card, user_id=resp.user_id), user


def user_of(card: Card) -> Id:
    """The User ID stored on the card (for its owner to see and write down)."""
    if not card.user_id:
        raise StateError(f"memory card {card.mc_id} is not registered", hint="run `vhw console register` first")
    try:
        return bindings.unwrap_id(card.mc_key, card.user_id, IdKind.USER, bindings.user_id(card.mc_id))
    except crypto.Invalid:
        raise StateError(f"memory card {card.mc_id}: its User ID does not open (damaged card)") from None


def wrapped_mid(card: Card, mid: Id) -> bytes:
    """The MID wrapped with the MC-Key (S12), reusing the card's copy when it has one."""
    for lic in card.licenses:
        if license_mid(card, lic) == mid:
            return lic.mid
    return bindings.wrap_id(card.mc_key, mid, bindings.mid(card.mc_id, user_of(card)))


def license_mid(card: Card, lic: License) -> Id | None:
    try:
        return bindings.unwrap_id(card.mc_key, lic.mid, IdKind.MEDIA, bindings.mid(card.mc_id, user_of(card)))
    except (crypto.Invalid, StateError):
        return None


def license_for(card: Card, mid: Id) -> License | None:
    for lic in card.licenses:
        if license_mid(card, lic) == mid:
            return lic
    return None


def acquisition_request(card: Card, client_id: Id, hdd_id: Id, mid: Id) -> p.AcquireRequest:
    """S12: MC-ID, wrapped User ID, wrapped MID, Client ID, HDD-ID."""
    user_of(card)  # refuses an unregistered card before anything is sent
    return p.AcquireRequest(card.mc_id, card.user_id, wrapped_mid(card, mid), client_id, hdd_id)


def confirm_request(card: Card, client_id: Id, hdd_id: Id, mid: Id) -> p.ConfirmRequest:
    return p.ConfirmRequest(card.mc_id, card.user_id, wrapped_mid(card, mid), client_id, hdd_id)


def accept_acquisition(card: Card, req: p.AcquireRequest, resp: p.AcquireResponse, mid: Id, *,
                       acquired: int, anchor: bytes) -> Card:
    """S16: store the wrapped Content-Key (bound to this MID and title), the wrapped Content-Gen-Key,
    the sealed device IDs and the card token on the card, after checking each opens as what it
    claims to be (the token against the platform CA in the ROM, ``anchor``)."""
    user = user_of(card)
    try:
        crypto.unwrap(card.mc_key, resp.content_key, bindings.content_key(card.mc_id, mid, resp.title_id))
        cgk = crypto.unwrap(card.mc_key, resp.content_gen_key, bindings.content_gen_key(card.mc_id, user))
        bindings.open_device_ids(cgk, user, resp.sealed_ids)
        bindings.open_card_token(anchor, resp.card_token, owner_of(cgk), card.mc_id)
    except crypto.Invalid:
        raise ServerError("the server's answer does not open with this memory card") from None
    card = replace(card, content_gen_key=resp.content_gen_key, sealed_ids=resp.sealed_ids, card_token=resp.card_token)
    return card.with_license(License(resp.title_id, req.mid, resp.content_key, acquired))


def content_gen_key(card: Card) -> bytes | None:
    """The Content-Gen-Key, unwrapped with the MC-Key; None when the card holds none (or it is bad)."""
    if not card.content_gen_key or not card.user_id:
        return None
    try:
        return crypto.unwrap(card.mc_key, card.content_gen_key, bindings.content_gen_key(card.mc_id, user_of(card)))
    except (crypto.Invalid, StateError):
        return None


@dataclass(frozen=True)
class Match:
    """A card that may copy to / play from this console and HDD: its key and its epoch."""

    content_gen_key: bytes = field(repr=False)
    owner: bytes
    epoch: int


def devices_match(card: Card, client_id: Id, hdd_id: Id, *, anchor: bytes,
                  epochs: dict[bytes, int]) -> Match | None:
    """S22-S23 / S32-S33: the card's sealed Client ID and HDD-ID are this console's and this HDD's,
    and the card is the user's current one (its token's epoch is not below what this HDD has seen)."""
    cgk = content_gen_key(card)
    if cgk is None or not card.sealed_ids:
        return None
    owner = owner_of(cgk)
    try:
        sealed_client, sealed_hdd = bindings.open_device_ids(cgk, user_of(card), card.sealed_ids)
        epoch = bindings.open_card_token(anchor, card.card_token, owner, card.mc_id)
    except (crypto.Invalid, StateError):
        return None
    if sealed_client != client_id or sealed_hdd != hdd_id or epoch < epochs.get(owner, 0):
        return None
    return Match(cgk, owner, epoch)


def copy_keys(card: Card, client_id: Id, hdd_id: Id, mid: Id, title_id: str, *, anchor: bytes,
              epochs: dict[bytes, int]) -> tuple[bytes, Match]:
    """S21-S23: (Content-Key, match) for copying, or COPY IS NOT PERMITTED."""
    match = devices_match(card, client_id, hdd_id, anchor=anchor, epochs=epochs)
    lic = license_for(card, mid)
    if match is None or lic is None or not lic.content_key:
        raise CopyNotPermitted()
    try:
        ck = crypto.unwrap(card.mc_key, lic.content_key, bindings.content_key(card.mc_id, mid, title_id))
    except crypto.Invalid:
        raise CopyNotPermitted() from None
    return ck, match


def reproduction_key(card: Card | None, client_id: Id, hdd_id: Id, *, anchor: bytes,
                     epochs: dict[bytes, int]) -> Match:
    """S31-S34: the match whose Content-Gen-Key opens this console's titles, or the refusal."""
    match = devices_match(card, client_id, hdd_id, anchor=anchor, epochs=epochs) if card is not None else None
    if match is None:
        raise ReproductionNotPermitted()
    return match


def drop_content_key(card: Card, mid: Id) -> Card:
    """S28: the copy is complete; the Content-Key leaves the card."""
    lic = license_for(card, mid)
    return card.without_content_key(lic.mid) if lic else card
