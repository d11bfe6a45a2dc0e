"""A licensing world without a network: a real SQLite database, the service, and consoles made of
plain objects (card, Client ID, HDD-ID) that use the console's real decision functions."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vhw import console as cpu
from vhw import crypto
from vhw import protocol as p
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.licensing import Licensing, Policy
from vhw.pki import make_ca
from vhw.store import SqliteStore, Store


@dataclass
class Kit:
    """One user's devices: a card, a console's Client ID, an HDD's HDD-ID."""

    card: Card
    client_id: Id
    hdd_id: Id
    user: Id | None = None

    def with_(self, **kw) -> Kit:
        return replace(self, **kw)


@dataclass
class World:
    lic: Licensing
    anchor: bytes  # the platform CA (DER) that signs card tokens, as a ROM holds it
    titles: dict[str, bytes] = field(default_factory=dict)  # title -> content key
    counter: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def make(cls, path: Path, *, policy: Policy | None = None, store: Store | None = None) -> World:
        store = store or SqliteStore(path / "lic.db")
        store.migrate()
        ca_der, ca_key = make_ca("test platform CA")
        sign = lambda data: ca_key.sign(data, ec.ECDSA(hashes.SHA256()))  # noqa: E731
        return cls(Licensing(store, crypto.random_key(), policy or Policy(), sign=sign), ca_der)

    def checks(self, epochs: dict | None = None) -> dict:
        """What a console checks a card against: its ROM's CA, its HDD's card epochs."""
        return {"anchor": self.anchor, "epochs": epochs or {}}

    def kit(self, *, register_devices: bool = True) -> Kit:
        card = Card(Id.random(IdKind.CARD), crypto.random_key(), 1)
        kit = Kit(card, Id.random(IdKind.CLIENT), Id.random(IdKind.HDD))
        if register_devices:
            self.lic.register_card("m", p.RegisterCard(card.mc_id, card.mc_key))
            self.lic.register_device("m", "consoles", kit.client_id)
            self.lic.register_device("m", "hdds", kit.hdd_id)
        return kit

    def user(self) -> Kit:
        return self.register(self.kit())

    def register(self, kit: Kit) -> Kit:
        resp = self.lic.register("console", cpu.registration_request(kit.card, kit.client_id, kit.hdd_id))
        card, user = cpu.accept_registration(kit.card, resp)
        return kit.with_(card=card, user=user)

    def title(self, title_id: str | None = None) -> str:
        title_id = title_id or f"T-{next(self.counter)}"
        key = crypto.random_key()
        self.lic.register_title("pub", p.RegisterTitle(title_id, title_id, key, os.urandom(32)))
        self.titles[title_id] = key
        return title_id

    def disc(self, title_id: str | None = None) -> tuple[str, Id]:
        title_id = title_id or self.title()
        mid = Id.random(IdKind.MEDIA)
        self.lic.register_media("pub", p.RegisterMedia(title_id, (mid,)))
        return title_id, mid

    def acquire(self, kit: Kit, mid: Id) -> Kit:
        req = cpu.acquisition_request(kit.card, kit.client_id, kit.hdd_id, mid)
        resp = self.lic.acquire("console", req)
        return kit.with_(card=cpu.accept_acquisition(kit.card, req, resp, mid, acquired=1, anchor=self.anchor))

    def confirm(self, kit: Kit, mid: Id) -> p.Done:
        return self.lic.confirm("console", cpu.confirm_request(kit.card, kit.client_id, kit.hdd_id, mid))
