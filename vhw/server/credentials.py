"""The role credentials a server home issues (``credentials/ROLE.json``): a bearer token (the
database keeps only its SHA-256), the server's URL and the CA, a client certificate, everything a
role's tools need to call the server; and the operator's tools over them: add, revoke, list."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pki
from ..devices.files import atomic_write, load_json
from ..errors import StateError
from ..roles import ROLES
from . import records
from .identity import HomePki
from .queries import token_hash
from .store import Store

__all__ = ["Credential", "Credentials"]


@dataclass
class Credential:
    role: str
    name: str
    token: str = field(repr=False)
    server: str
    ca: str  # PEM of the platform CA
    cert: str = ""  # PEM client certificate signed by the platform CA (broker mode needs it)
    key: str = field(default="", repr=False)  # its private key (PEM)
    signing: str = ""  # PEM of the platform's signing certificate (the manufacturer pins it in ROMs)

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
        return load_json(cls, path, "vhw credential file", _check_credential)


def _check_credential(cred: Credential) -> None:
    if cred.role not in ROLES or not cred.token:
        raise ValueError(f"no token, or a role vhw does not know ({cred.role!r})")


class Credentials:
    """The credentials of one home: their hashes in its database, their files in its folder."""

    def __init__(self, root: Path, pki: HomePki, url: Callable[[], str]):
        self.root = root
        self.pki = pki
        self.url = url  # the server's public URL (from the home's configuration)

    def path(self, role: str) -> Path:
        return self.root / "credentials" / f"{role}.json"

    def list(self, store: Store) -> list[tuple[str, str, int]]:
        """(role, name, issued) of every credential."""
        with store.transaction() as tx:
            return [(r.role, r.name, int(r.created)) for r in records.credentials(tx)]

    def issued_before(self, store: Store, when: float) -> tuple[tuple[str, str], ...]:
        """(role, name) of the credentials last issued before ``when`` (Unix time)."""
        last: dict[tuple[str, str], int] = {}
        for role, name, created in self.list(store):
            last[role, name] = max(created, last.get((role, name), created))
        return tuple(sorted(key for key, created in last.items() if created < when))

    def revoke(self, store: Store, role: str, name: str) -> None:
        """Delete a credential's hash: its token calls nothing any more, and the sessions opened
        with it fail their next check. Written to the audit log."""
        with store.transaction() as tx:
            if not records.remove_credential(tx, role, name):
                raise StateError(f"no {role} credential {name!r}", hint="vhw server credential ls")
            tx.audit(int(time.time()), "operator", [("revoke-credential", f"{role}:{name}", {})])

    def add(self, store: Store, role: str, name: str, out: Path | None = None) -> Credential:
        ca, ca_key = self.pki.client_issuer()  # (during a CA rollover: the next CA; and both are trusted)
        cert, key = pki.issue(ca, ca_key, f"vhw {role} {name}", client=True)
        cred = Credential(
            role,
            name,
            secrets.token_urlsafe(32),
            self.url(),
            self.pki.anchors_pem().decode(),
            pki.cert_pem(cert).decode(),
            pki.key_pem(key).decode(),
            pki.cert_pem(self.pki.signing_der()).decode(),
        )
        with store.transaction() as tx:
            records.add_credential(tx, cred.token_hash, role, name, int(time.time()))
            tx.audit(int(time.time()), "operator", [("add-credential", f"{role}:{name}", {})])
        atomic_write(out or self.path(role), cred.to_json(), mode=0o600)
        return cred
