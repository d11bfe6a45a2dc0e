"""What the console decides in each flow, without I/O: build requests, check and store answers.

A flow opens the memory card once into a :class:`CardView` (the User ID and every license's MID
unwrapped with the MC-Key, once), asks it what it needs, and writes back the card the view holds
at the flow's commit points. What the console knows of its own hardware, the Client ID and HDD-ID
with the secrets of its ROM and its HDD, the platform CA and the card epochs the HDD has seen, is
a :class:`Hardware`. Functions take these and the server's responses and return requests or a new
view. The emulated machine (:mod:`vhw.console.machine`) reads and writes the files and talks to the
server; the tests call these functions directly too.

Every check that refuses rests on a key the holder of a lent file lacks (:mod:`vhw.bindings`): the
Content-Gen-Key and Content-Keys on a card open only with this console's and this HDD's secrets,
and the card token only verifies with the platform's signature. The comparisons of the patent's
S22-S23 and S32-S33 are still made, and still refuse with the patent's words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .. import bindings, crypto
from .. import protocol as p
from ..bindings import DeviceSecrets, TitleBinding, owner_of
from ..errors import CopyNotPermitted, ReproductionNotPermitted, ServerError, StateError
from ..formats.card import Card, License
from ..ids import Id, IdKind

__all__ = ["CardView", "reissued_card"]


R = TypeVar("R", p.AcquireRequest, p.ConfirmRequest)


@dataclass(frozen=True)
class Hardware:
    """The console as one flow sees it: its devices' IDs and secrets, the platform's signing
    certificate from its ROM (``anchor``: card tokens verify with it), and the highest card epoch
    per user that its HDD has seen."""

    devices: DeviceSecrets
    anchor: bytes = b""
    epochs: Mapping[bytes, int] = field(default_factory=dict)

    @property
    def client_id(self) -> Id:
        return self.devices.client_id

    @property
    def hdd_id(self) -> Id:
        return self.devices.hdd_id


@dataclass(frozen=True)
class CardView:
    """A memory card opened once: the User ID and each license's MID, unwrapped with the MC-Key.

    Views are immutable like the card: each change returns a new view of the changed card, and
    the flow writes ``view.card`` back when it commits.
    """

    card: Card
    user: Id | None = None
    mids: tuple[Id | None, ...] = ()  # the MID of each of card.licenses (None: does not open)
    damaged: bool = False  # the card holds a User ID that does not open with its MC-Key

    @classmethod
    def open(cls, card: Card) -> CardView:
        user, damaged = None, False
        try:
            user = bindings.card_user(card.mc_key, card.mc_id, card.user_id)
        except crypto.Invalid:
            damaged = True
        return cls(card, user, tuple(_open_mid(card, user, lic) for lic in card.licenses), damaged)

    def require_user(self) -> Id:
        """The User ID, or the reason the card has none for this console to use."""
        if self.damaged:
            raise StateError(f"memory card {self.card.mc_id}: its User ID does not open (damaged card)")
        if self.user is None:
            raise StateError(
                f"memory card {self.card.mc_id} is not registered", hint="run `vhw console register` first"
            )
        return self.user

    def license_for(self, mid: Id) -> License | None:
        for lic, found in zip(self.card.licenses, self.mids, strict=True):
            if found == mid:
                return lic
        return None

    def licenses(self) -> list[tuple[License, Id | None]]:
        return list(zip(self.card.licenses, self.mids, strict=True))

    def wrapped_mid(self, mid: Id) -> bytes:
        """The MID wrapped with the MC-Key (S12), reusing the card's copy when it has one."""
        lic = self.license_for(mid)
        if lic is not None:
            return lic.mid
        return bindings.wrap_id(self.card.mc_key, mid, bindings.mid(self.card.mc_id, self.require_user()))

    # -- changes ------------------------------------------------------------------------------

    def _with(self, pairs: list[tuple[License, Id | None]], **card_changes: Any) -> CardView:
        card = replace(self.card, licenses=tuple(lic for lic, _ in pairs), **card_changes)
        return replace(self, card=card, mids=tuple(mid for _, mid in pairs))

    def with_license(self, lic: License, mid: Id, **card_changes: Any) -> CardView:
        """Add a license for ``mid``, replacing one for the same wrapped MID."""
        kept = [(x, m) for x, m in self.licenses() if x.mid != lic.mid]
        return self._with(kept + [(lic, mid)], **card_changes)

    def without_content_key(self, mid: Id) -> CardView:
        return self._with([(replace(x, content_key=b"") if m == mid else x, m) for x, m in self.licenses()])

    def wiped(self) -> CardView:
        """FIG. 13: the Content-Gen-Key, sealed IDs, card token and pending keys leave the card."""
        return self._with(
            [(replace(x, content_key=b""), m) for x, m in self.licenses()],
            content_gen_key=b"",
            sealed_ids=b"",
            card_token=b"",
        )


def _open_mid(card: Card, user: Id | None, lic: License) -> Id | None:
    if user is None:
        return None
    try:
        return bindings.unwrap_id(card.mc_key, lic.mid, IdKind.MEDIA, bindings.mid(card.mc_id, user))
    except crypto.Invalid:
        return None


# -- registration, S1-S7 ------------------------------------------------------------------------


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


# -- acquisition, S11-S17 -------------------------------------------------------------------------


@dataclass(frozen=True)
class Medium:
    """What an acquisition needs of the disc in the tray: its MID, its title digest, and its own
    secret (None: a license bought for a disc without a MID, which has nothing to prove)."""

    mid: Id
    title_digest: bytes
    secret: bytes | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return str(self.mid)  # what its label shows


def _request(cls: type[R], view: CardView, hw: Hardware, disc: Medium) -> R:
    user = view.require_user()  # refuses an unregistered card before anything is sent
    card = view.card
    proof = None
    if disc.secret is not None:
        proof = bindings.disc_proof(disc.secret, disc.mid, user, card.mc_id, hw.client_id, hw.hdd_id, disc.title_digest)
    return cls(card.mc_id, card.user_id, view.wrapped_mid(disc.mid), hw.client_id, hw.hdd_id, disc.title_digest, proof)


def acquisition_request(view: CardView, hw: Hardware, disc: Medium) -> p.AcquireRequest:
    """S12: MC-ID, wrapped User ID, wrapped MID, Client ID, HDD-ID, and the proof of the disc."""
    return _request(p.AcquireRequest, view, hw, disc)


def confirm_request(view: CardView, hw: Hardware, disc: Medium) -> p.ConfirmRequest:
    return _request(p.ConfirmRequest, view, hw, disc)


def accept_acquisition(
    view: CardView, req: p.AcquireRequest, resp: p.AcquireResponse, mid: Id, hw: Hardware, *, acquired: int
) -> CardView:
    """S16: store the Content-Key and Content-Gen-Key (sealed to the user's console and HDD), the
    sealed device IDs and the card token on the card.

    When the keys were issued for this console and HDD, everything is checked to open as what it
    claims to be (the token against the platform CA in the ROM). Keys issued for the user entry's
    other devices (a policy that does not identify users by this console or HDD) are stored as
    they came: the copy check, S21-S23, refuses them.
    """
    user = view.require_user()
    card = view.card
    ad = bindings.content_gen_key(card.mc_id, user)
    try:
        wrapped = bindings.open_on_devices(hw.devices, bindings.CONTENT_GEN_KEY, resp.content_gen_key, ad)
    except crypto.Invalid:
        wrapped = None  # not for this console and HDD
    if wrapped is not None:
        try:
            cgk = crypto.unwrap(card.mc_key, wrapped, ad)
            bindings.open_content_key(hw.devices, card.mc_key, card.mc_id, mid, resp.title_id, resp.content_key)
            bindings.open_device_ids(cgk, user, resp.sealed_ids)
            bindings.open_card_token(hw.anchor, resp.card_token, owner_of(cgk), card.mc_id)
        except crypto.Invalid:
            raise ServerError("the server's answer does not open with this memory card and console") from None
    return view.with_license(
        License(resp.title_id, req.mid, resp.content_key, acquired),
        mid,
        content_gen_key=resp.content_gen_key,
        sealed_ids=resp.sealed_ids,
        card_token=resp.card_token,
    )


# -- copy, S21-S28, and reproduction, S31-S35 -----------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A card that may copy to / play from this console and HDD: the user, the Content-Gen-Key
    it opened here, whose it is (``owner``), the card's epoch, and the key titles are bound under."""

    user: Id
    content_gen_key: bytes = field(repr=False)
    owner: bytes
    epoch: int
    binding: TitleBinding = field(repr=False)


@dataclass(frozen=True)
class _OpenedHere:
    """A card's keys opened on this console and HDD (its Content-Gen-Key is sealed to them)."""

    user: Id
    cgk: bytes = field(repr=False)
    owner: bytes
    epoch: int
    ids_match: bool  # its sealed Client ID and HDD-ID are this console's and HDD's


def _open_here(view: CardView, hw: Hardware) -> _OpenedHere | None:
    card, user = view.card, view.user
    if user is None or not card.content_gen_key or not card.sealed_ids:
        return None
    try:
        cgk = bindings.open_content_gen_key(hw.devices, card.mc_key, card.mc_id, user, card.content_gen_key)
        owner = owner_of(cgk)
        sealed_client, sealed_hdd = bindings.open_device_ids(cgk, user, card.sealed_ids)
        epoch = bindings.open_card_token(hw.anchor, card.card_token, owner, card.mc_id)
    except crypto.Invalid:
        return None
    return _OpenedHere(user, cgk, owner, epoch, sealed_client == hw.client_id and sealed_hdd == hw.hdd_id)


def devices_match(view: CardView, hw: Hardware) -> Match | None:
    """S22-S23 / S32-S33: the card's Content-Gen-Key opens on this console and HDD, its sealed
    Client ID and HDD-ID are theirs, and the card is the user's current one (its token's epoch is
    not below what this HDD has seen)."""
    here = _open_here(view, hw)
    if here is None or not here.ids_match or here.epoch < hw.epochs.get(here.owner, 0):
        return None
    return Match(here.user, here.cgk, here.owner, here.epoch, TitleBinding.derive(here.cgk, here.user, hw.devices))


def replaced(view: CardView, hw: Hardware) -> bool:
    """The card is the user's and opens on this console and HDD, but a newer card of the user's
    has been used here (a reissue, FIG. 14): it was replaced, which its holder may be told."""
    here = _open_here(view, hw)
    return here is not None and here.epoch < hw.epochs.get(here.owner, 0)


def copy_keys(view: CardView, hw: Hardware, mid: Id, title_id: str) -> tuple[bytes, Match]:
    """S21-S23: (Content-Key, match) for copying, or COPY IS NOT PERMITTED."""
    match = devices_match(view, hw)
    lic = view.license_for(mid)
    if match is None or lic is None or not lic.content_key:
        raise CopyNotPermitted()
    card = view.card
    try:
        ck = bindings.open_content_key(hw.devices, card.mc_key, card.mc_id, mid, title_id, lic.content_key)
    except crypto.Invalid:
        raise CopyNotPermitted() from None
    return ck, match


def reproduction_key(view: CardView | None, hw: Hardware) -> Match:
    """S31-S34: the match whose binding opens this console's titles, or the refusal."""
    match = devices_match(view, hw) if view is not None else None
    if match is None:
        raise ReproductionNotPermitted()
    return match


def drop_content_key(view: CardView, mid: Id) -> CardView:
    """S28: the copy is complete; the Content-Key leaves the card."""
    return view.without_content_key(mid)


# -- the repair center, FIG. 14 ---------------------------------------------------------------------


def reissued_card(user_id: Id, mc_id: Id, mc_key: bytes, resp: p.ReissueResponse, stamp: int) -> Card:
    """The new card of a reissue: the server's answer, which must open with the new MC-Key as the
    User ID asked for (the CLI and the web console both write this)."""
    card = Card(
        mc_id,
        mc_key,
        stamp,
        user_id=resp.user_id,
        content_gen_key=resp.content_gen_key,
        sealed_ids=resp.sealed_ids,
        card_token=resp.card_token,
        licenses=tuple(License(x.title_id, x.mid, b"", stamp) for x in resp.licenses),
    )
    if CardView.open(card).user != user_id:
        raise ServerError("the server's answer does not fit the new card")
    return card
