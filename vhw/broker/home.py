"""The broker's folder: config.json, credential.json (its platform credential), tls.pem and
tls-key.pem (its TLS identity, signed by the platform CA) and broker.db (accounts, holds, ledger,
staff, audit)."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import protocol as p
from ..devices.files import atomic_write
from ..errors import FileError, InputError, StateError
from ..server.credentials import Credential
from ..server.store import SqliteStore, Store
from .config import BrokerConfig, valid_currency
from .payments import TestProcessor
from .records import SCHEMA
from .service import Broker

__all__ = ["BrokerHome"]


def _check_tls(tls: Path) -> None:
    """A TLS identity folder from the platform (`vhw server issue-cert`), checked before anything
    is written."""
    for name in ("tls.pem", "tls-key.pem"):
        if not (tls / name).exists():
            raise StateError(f"{tls}: no {name}", hint="vhw server issue-cert broker --host HOST -o DIR")


def _broker_credential(path: Path) -> Credential:
    cred = Credential.load(path)
    if cred.role != "broker":
        raise FileError(path, f"is a {cred.role} credential, not a broker's")
    return cred


class BrokerHome:
    """config.json, credential.json (the broker's platform credential), tls.pem + tls-key.pem (its
    TLS identity, signed by the platform CA), broker.db (accounts, holds, ledger, audit)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    @classmethod
    def init(
        cls,
        root: Path,
        *,
        credential: Path,
        tls: Path,
        server: str | None,
        listen: str,
        price_cents: int,
        platform_share: int,
        currency: str = "EUR",
    ) -> BrokerHome:
        home = cls(root)
        if home.path("config.json").exists():
            raise StateError(f"{root}: a broker is set up here already")
        # everything checked before anything is written: a refused init leaves no half-made home
        cred = _broker_credential(credential)
        _check_tls(tls)
        if not valid_currency(currency):
            raise InputError(f"{currency!r} is not a currency: give its three-letter ISO 4217 code (EUR, USD, JPY)")
        cfg = BrokerConfig(
            server=server or cred.server,
            listen=listen,
            price_cents=price_cents,
            platform_share=platform_share,
            currency=currency,
        )
        BrokerConfig(**asdict(cfg))
        home.root.mkdir(parents=True, exist_ok=True)
        home.root.chmod(0o700)
        home._write_identity(tls, cred)
        atomic_write(home.path("config.json"), json.dumps(asdict(cfg), indent=1).encode())
        home.store().close()  # (made, with its schema)
        return home

    def take_identity(self, tls: Path, credential: Path | None = None) -> None:
        """Take a TLS identity the platform issued (``vhw server issue-cert``: tls.pem, tls-key.pem,
        trust.json), and a new platform credential when given: at set-up, and during a CA
        rollover."""
        _check_tls(tls)
        self._write_identity(tls, _broker_credential(credential) if credential is not None else None)

    def _write_identity(self, tls: Path, cred: Credential | None) -> None:
        if cred is not None:
            atomic_write(self.path("credential.json"), cred.to_json(), mode=0o600)
        if (tls / "trust.json").exists():
            atomic_write(self.path("trust.json"), (tls / "trust.json").read_bytes())
        atomic_write(self.path("tls-key.pem"), (tls / "tls-key.pem").read_bytes(), mode=0o600)
        atomic_write(self.path("tls.pem"), (tls / "tls.pem").read_bytes())

    def trust(self) -> p.Trust:
        """The platform CAs this broker announces to consoles: those of its identity's trust.json
        (written by `vhw server issue-cert`), else those its credential trusts."""
        path = self.path("trust.json")
        if path.exists():
            try:
                return p.decode(p.Trust, json.loads(path.read_text()))
            except (ValueError, p.ProtocolError) as exc:
                raise FileError(path, f"not the platform's trust announcement ({exc})") from None
        pems = Credential.load(self.path("credential.json")).ca.encode()
        return p.Trust(tuple(c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pems)))

    def require(self) -> None:
        """Refuse, in one line, a folder that holds no broker: nothing, or another's configuration
        (a licensing server's home has a config.json too)."""
        self.config()

    def config(self) -> BrokerConfig:
        if not self.path("config.json").exists():
            raise StateError(f"{self.root}: no broker here", hint="vhw broker init")
        return BrokerConfig.load(self.path("config.json"))

    def store(self) -> Store:
        """This home's database, its schema brought up to date."""
        store = SqliteStore(self.path("broker.db"))
        try:
            store.migrate(SCHEMA)
        except BaseException:
            store.close()
            raise
        return store

    def processor_key(self) -> bytes:
        """The key payment-card tokens are made under (``processor.key``, owner only; made on
        first use)."""
        path = self.path("processor.key")
        if not path.exists():
            atomic_write(path, secrets.token_bytes(32).hex().encode() + b"\n", mode=0o600)
        try:
            key = bytes.fromhex(path.read_text().strip())
        except ValueError:
            raise FileError(path, "not a processor key (32 bytes, hex)") from None
        if len(key) != 32:
            raise FileError(path, "not a processor key (32 bytes, hex)")
        return key

    @contextlib.contextmanager
    def broker(self) -> Iterator[Broker]:
        """A Broker over this home's database, relaying to the server with its credential."""
        from ..client import Client, tls_context  # (httpx: only the commands that relay to the server)

        cfg = self.config()
        cred = Credential.load(self.path("credential.json"))
        store = self.store()
        # (a relay retries briefly, and says so in its log; the console behind it retries longer)
        client = Client(
            cfg.server,
            tls_context(ca_pem=cred.ca, client_cert=cred.client_cert),
            token=cred.token,
            retry_for=10.0,
            notice=logging.getLogger("vhw.broker").warning,
        )
        try:
            yield Broker(store, TestProcessor(store, self.processor_key()), cfg, client.call)
        finally:
            client.close()
            store.close()
