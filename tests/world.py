"""A licensing world without a network: a real SQLite database, the service, and consoles made of
plain objects (card, Client ID and ROM secret, HDD-ID and HDD secret) that use the console's real
decision functions."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vhw import crypto
from vhw import protocol as p
from vhw.bindings import DeviceSecrets
from vhw.console import decisions
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.pki import issue_signer, make_ca
from vhw.server.licensing import Licensing, Policy
from vhw.server.store import SqliteStore, Store


@dataclass
class Kit:
    """One user's devices: a card, a console (Client ID + ROM secret), an HDD (HDD-ID + secret)."""

    card: Card
    devices: DeviceSecrets
    user: Id | None = None

    @property
    def client_id(self) -> Id:
        return self.devices.client_id

    @property
    def hdd_id(self) -> Id:
        return self.devices.hdd_id

    @property
    def view(self) -> decisions.CardView:
        return decisions.CardView.open(self.card)

    def with_(self, **kw) -> Kit:
        return replace(self, **kw)

    def on(self, *, console: Kit | None = None, hdd: Kit | None = None) -> Kit:
        """This kit's card in another kit's console and/or with another kit's HDD."""
        c, h = console or self, hdd or self
        return replace(self, devices=DeviceSecrets(c.client_id, h.hdd_id, c.devices.console, h.devices.hdd))


@dataclass
class World:
    lic: Licensing
    anchor: bytes  # the platform's signing certificate (DER) that card tokens verify with, as a ROM pins it
    titles: dict[str, bytes] = field(default_factory=dict)  # title -> content key
    digests: dict[str, bytes] = field(default_factory=dict)  # title -> title digest
    counter: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def make(cls, path: Path, *, policy: Policy | None = None, store: Store | None = None) -> World:
        store = store or SqliteStore(path / "lic.db")
        store.migrate()
        ca_der, ca_key = make_ca("test platform CA")
        signer_der, signer_key = issue_signer(ca_der, ca_key, "test platform signing key")
        sign = lambda data: signer_key.sign(data, ec.ECDSA(hashes.SHA256()))  # noqa: E731
        return cls(Licensing(store, crypto.random_key(), policy or Policy(), sign=sign), signer_der)

    def hw(self, kit: Kit, epochs: dict | None = None) -> decisions.Hardware:
        """The console a kit's card is in, as its CPU sees it: devices, the ROM's CA, the HDD's epochs."""
        return decisions.Hardware(kit.devices, self.anchor, epochs or {})

    def kit(self, *, register_devices: bool = True) -> Kit:
        card = Card(Id.random(IdKind.CARD), crypto.random_key(), 1)
        devices = DeviceSecrets(
            Id.random(IdKind.CLIENT), Id.random(IdKind.HDD), crypto.device_secret(), crypto.device_secret()
        )
        kit = Kit(card, devices)
        if register_devices:
            public = devices.public()
            self.lic.register_card("m", p.RegisterCard(card.mc_id, card.mc_key))
            self.lic.register_device("m", "consoles", kit.client_id, public.console)
            self.lic.register_device("m", "hdds", kit.hdd_id, public.hdd)
        return kit

    def user(self) -> Kit:
        return self.register(self.kit())

    def register(self, kit: Kit) -> Kit:
        resp = self.lic.register("console", decisions.registration_request(kit.card, kit.client_id, kit.hdd_id))
        card, user = decisions.accept_registration(kit.card, resp)
        return kit.with_(card=card, user=user)

    def title(self, title_id: str | None = None) -> str:
        title_id = title_id or f"T-{next(self.counter)}"
        key, digest = crypto.random_key(), os.urandom(32)
        self.lic.register_title("pub", p.RegisterTitle(title_id, title_id, key, digest))
        self.titles[title_id] = key
        self.digests[title_id] = digest
        return title_id

    def disc(self, title_id: str | None = None) -> tuple[str, decisions.Medium]:
        """A pressed disc of the title: its MID registered with the public key of its own secret."""
        title_id = title_id or self.title()
        disc = new_disc(self.digests[title_id])
        self.lic.register_media("pub", p.RegisterMedia(title_id, (pressed(disc),)))
        return title_id, disc

    def acquire(self, kit: Kit, disc: decisions.Medium) -> Kit:
        view, hw = kit.view, self.hw(kit)
        req = decisions.acquisition_request(view, hw, disc)
        resp = self.lic.acquire("console", req)
        return kit.with_(card=decisions.accept_acquisition(view, req, resp, disc.mid, hw, acquired=1).card)

    def confirm(self, kit: Kit, disc: decisions.Medium) -> p.Done:
        return self.lic.confirm("console", decisions.confirm_request(kit.view, self.hw(kit), disc))


def new_disc(title_digest: bytes) -> decisions.Medium:
    """A disc as its holder has it: a fresh MID, the title's digest, the disc's own secret."""
    return decisions.Medium(Id.random(IdKind.MEDIA), title_digest, crypto.signing_seed())


def pressed(disc: decisions.Medium) -> p.PressedDisc:
    """What the publisher registers of a disc: its MID and the public key of its secret."""
    assert disc.secret is not None
    return p.PressedDisc(disc.mid, crypto.public_bytes(crypto.signing_key_from(disc.secret)))
