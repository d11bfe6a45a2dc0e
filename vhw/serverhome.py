"""The platform operator's state: one folder made by ``vhw server init``.

    config.json            listen address, public URL, database URL, identification policy, mode
    master.key             32 random bytes (hex) that encrypt every key at rest in the database
    ca.pem, ca-key.pem     the platform CA: console ROMs trust it; it signs the server's (and the
                           broker's) TLS certificates
    server.pem, server-key.pem   the server's TLS identity (127.0.0.1, ::1, localhost + --host)
    credentials/ROLE.json  one credential each for manufacturer, publisher, operator and broker:
                           a bearer token (the database keeps only its SHA-256), the server URL
                           and the CA, everything a role's tools need to call the server
    vhw.db                 the SQLite database (when no PostgreSQL URL is configured)

Secrets are written 0600 in a 0700 folder. ``master.key`` and a database dump are kept apart in a
real deployment: the dump alone reveals no key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from . import pki
from .devices.files import atomic_write, describe_os_error
from .errors import ImageError, StateError
from .licensing import ID_FIELDS, Licensing, Policy
from .roles import ROLES
from .store import Store, open_store
WHAT = "server home"


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:8443"
    url: str = "https://127.0.0.1:8443"
    database: str = ""  # empty: vhw.db in the home folder
    identify_by: list[str] = field(default_factory=lambda: list(ID_FIELDS))
    mode: str = "direct"  # "broker": users reach the server only through the broker (FIG. 15)
    attempt_limit: int = 10
    attempt_window: int = 600

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> ServerConfig:
        try:
            raw = json.loads(data)
            cfg = cls(**raw)
            Policy(frozenset(cfg.identify_by), cfg.attempt_limit, cfg.attempt_window)
            if cfg.mode not in ("direct", "broker"):
                raise ValueError(f"mode {cfg.mode!r}")
        except (ValueError, TypeError) as exc:
            raise ImageError(path, f"invalid server configuration: {exc}") from None
        return cfg


@dataclass
class Credential:
    role: str
    name: str
    token: str = field(repr=False)
    server: str
    ca: str  # PEM of the platform CA
    cert: str = ""  # PEM client certificate signed by the platform CA (broker mode needs it)
    key: str = field(default="", repr=False)  # its private key (PEM)

    @property
    def client_cert(self) -> tuple[str, str] | None:
        return (self.cert, self.key) if self.cert and self.key else None

    @property
    def token_hash(self) -> bytes:
        return token_hash(self.token)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def load(cls, path: Path) -> Credential:
        path = Path(path)
        try:
            raw = json.loads(path.read_bytes())
            cred = cls(**raw)
            if cred.role not in ROLES or not cred.token:
                raise ValueError
        except OSError as exc:
            raise ImageError(path, f"cannot read credential: {describe_os_error(exc)}") from None
        except (ValueError, TypeError):
            raise ImageError(path, "not a vhw credential file") from None
        return cred


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class ServerHome:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root / name

    def credential_path(self, role: str) -> Path:
        return self.root / "credentials" / f"{role}.json"

    @property
    def exists(self) -> bool:
        return (self.root / "config.json").exists()

    # -- init -----------------------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path, *, listen: str = "127.0.0.1:8443", url: str | None = None,
             hosts: list[str] = (), database: str = "", identify_by: list[str] | None = None,
             mode: str = "direct") -> ServerHome:
        home = cls(root)
        if home.exists:
            raise StateError(f"{root}: a server home is already here", hint="use it, or choose another --home")
        home.root.mkdir(parents=True, exist_ok=True)
        os.chmod(home.root, 0o700)
        (home.root / "credentials").mkdir(exist_ok=True)
        host = listen.rpartition(":")[0].strip("[]")
        cfg = ServerConfig(listen=listen, url=url or f"https://{listen}", database=database,
                           identify_by=list(identify_by or ID_FIELDS), mode=mode)
        Policy(frozenset(cfg.identify_by))
        ca_der, ca_key = pki.make_ca("vhw platform CA")
        names = sorted({"127.0.0.1", "::1", "localhost", host, *hosts} - {"", "0.0.0.0", "::"})
        cert_der, cert_key = pki.issue(ca_der, ca_key, "vhw licensing server", hosts=names)
        atomic_write(home.path("ca.pem"), pki.cert_pem(ca_der))
        atomic_write(home.path("ca-key.pem"), pki.key_pem(ca_key), mode=0o600)
        atomic_write(home.path("server.pem"), pki.cert_pem(cert_der) + pki.cert_pem(ca_der))
        atomic_write(home.path("server-key.pem"), pki.key_pem(cert_key), mode=0o600)
        atomic_write(home.path("master.key"), secrets.token_bytes(32).hex().encode() + b"\n", mode=0o600)
        atomic_write(home.path("config.json"), json.dumps(asdict(cfg), indent=1).encode())
        store = home.store()
        try:
            store.migrate()
            for role in ROLES:
                home.add_credential(store, role, role)
        finally:
            store.close()
        return home

    def issue_server_cert(self, name: str, hosts: list[str], out: Path) -> None:
        """A TLS server identity signed by the platform CA, for a broker: consoles trust it."""
        out.mkdir(parents=True, exist_ok=True)
        cert, key = pki.issue(self.ca_der(), self.ca_key(), name,
                              hosts=sorted({"127.0.0.1", "::1", "localhost", *hosts}))
        atomic_write(out / "tls.pem", pki.cert_pem(cert) + pki.cert_pem(self.ca_der()))
        atomic_write(out / "tls-key.pem", pki.key_pem(key), mode=0o600)

    def add_credential(self, store: Store, role: str, name: str, out: Path | None = None) -> Credential:
        cert, key = pki.issue(self.ca_der(), self.ca_key(), f"vhw {role} {name}", client=True)
        cred = Credential(role, name, secrets.token_urlsafe(32), self.config().url,
                          self.path("ca.pem").read_text(), pki.cert_pem(cert).decode(), pki.key_pem(key).decode())
        with store.transaction() as tx:
            tx.execute("INSERT INTO credentials (token_hash, role, name, created) VALUES (?, ?, ?, ?)",
                       cred.token_hash, role, name, int(time.time()))
        atomic_write(out or self.credential_path(role), cred.to_json(), mode=0o600)
        return cred

    # -- loading --------------------------------------------------------------------------------

    def require(self) -> None:
        if not self.exists:
            raise StateError(f"{self.root}: no server home here", hint="run `vhw server init` first")

    def config(self) -> ServerConfig:
        self.require()
        path = self.path("config.json")
        return ServerConfig.from_json(path.read_bytes(), path)

    def master_key(self) -> bytes:
        path = self.path("master.key")
        try:
            key = bytes.fromhex(path.read_text().strip())
        except OSError as exc:
            raise ImageError(path, f"cannot read master key: {describe_os_error(exc)}") from None
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ImageError(path, "not a master key (32 bytes, hex)")
        return key

    def ca_der(self) -> bytes:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.path("ca.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    def ca_key(self):
        return serialization.load_pem_private_key(self.path("ca-key.pem").read_bytes(), password=None)

    def database_url(self, override: str | None = None) -> str:
        return override or self.config().database or f"sqlite:///{self.path('vhw.db')}"

    def store(self, database: str | None = None) -> Store:
        return open_store(self.database_url(database))

    def signer(self):
        """Signs card tokens with the platform CA's key (ECDSA P-256, SHA-256)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = self.ca_key()
        return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))

    def licensing(self, store: Store) -> Licensing:
        cfg = self.config()
        policy = Policy(frozenset(cfg.identify_by), cfg.attempt_limit, cfg.attempt_window)
        return Licensing(store, self.master_key(), policy, sign=self.signer())
