"""The console's modem: how it reaches its licensing server or, in broker mode, its broker
(FIG. 15): the address it uses, a client that trusts only the platform's CA, and the broker
account it signs in with (a token kept beside ``console.json``, never the password).

The CA is its ROM's until the platform rolls its CA over: every answer names the CAs the service
announces (a digest); when they are not the console's, the console asks for them and takes a new
one only on a cross-certificate from a CA it trusts already (:func:`vhw.pki.follow_rollover`),
and drops the ones no longer announced. What it trusts then is ``trust.json``, beside
``console.json``."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import pki
from .. import protocol as p
from ..devices.files import atomic_write
from ..errors import FileError, VhwError
from ..formats.rom import Rom

if TYPE_CHECKING:  # (httpx loads only for the flows that talk to the server)
    import ssl

    from ..client import Client

TRUST_FILE = "trust.json"

__all__ = ["Modem"]


class Modem:
    def __init__(self, root: Path, server: Callable[[], str], rom: Callable[[], Rom]):
        self.root = root
        self.server = server  # the address set up for this console ("": its ROM's)
        self.rom = rom

    def url(self, rom: Rom) -> str:
        """The server (or broker) this console talks to: the one set up, else its ROM's."""
        return self.server() or rom.server_url

    def client(self, rom: Rom) -> Client:
        from ..client import Client  # (httpx: only the flows that talk to the server)

        return Client(self.url(rom), self.tls(rom), token=self.token(), after=self.follow)

    def anchors(self, rom: Rom) -> list[bytes]:
        """The CAs this console trusts (DER): those it took in a CA rollover, else its ROM's."""
        path = self.root / TRUST_FILE
        if not path.exists():
            return [rom.trust_anchor] if rom.trust_anchor else []
        try:
            anchors = [base64.b64decode(a, validate=True) for a in json.loads(path.read_text())["anchors"]]
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            raise FileError(path, "not a console's trust file (a JSON list of CA certificates)") from None
        if not anchors:
            raise FileError(path, "names no CA: this console trusts nothing")
        return anchors

    def tls(self, rom: Rom) -> ssl.SSLContext:
        """A TLS context that trusts this console's CAs alone."""
        from ..client import tls_context  # (httpx: only the flows that talk to the server)

        anchors = self.anchors(rom)
        return tls_context(ca_pem="".join(pki.cert_pem(a).decode() for a in anchors) if anchors else None)

    def trust(self, anchors: list[bytes]) -> None:
        """Trust ``anchors`` from now on (instead of the ROM's CA, or those taken before)."""
        data = {"anchors": [base64.b64encode(a).decode() for a in anchors]}
        atomic_write(self.root / TRUST_FILE, json.dumps(data, indent=1).encode())

    def follow(self, client: Client) -> None:
        """After a use of ``client``: when the service announced CAs other than this console's,
        take its announcement (a CA rollover's new CA on a cross-certificate from one this console
        trusts; an old one retired), and say so. A failure here fails nothing: it is said, and
        tried again at the next contact."""
        current = self.anchors(self.rom())
        if client.trust_seen is None or client.trust_seen == pki.anchors_digest(current):
            return
        try:
            announced = client.get("/v1/trust", p.Trust)
        except VhwError as exc:
            client.tell(f"could not ask {client.url} for the platform's CAs ({exc.message}); asked again next time")
            return
        taken = pki.follow_rollover(current, announced.anchors, announced.cross)
        if taken == current:
            client.tell(f"{client.url} announces platform CAs that no CA this console trusts vouches for: kept its own")
            return
        self.trust(taken)
        for der in taken:
            if der not in current:
                client.tell(f"this console now trusts the platform's new CA ({pki.common_name(der)})")
        for der in current:
            if der not in taken:
                client.tell(f"this console no longer trusts the platform's retired CA ({pki.common_name(der)})")

    def unreachable(self) -> str | None:
        """Why the console's server does not answer now (one try, a few seconds at most), or None
        when it does: said at set-up, which goes on without it."""
        import httpx  # (only the flows that talk to the server)

        from ..client import Client

        rom = self.rom()
        url = self.url(rom)
        try:
            with Client(url, self.tls(rom), retry_for=0, timeout=httpx.Timeout(5.0)) as c:
                c.get("/v1/health", p.Health)
        except VhwError as exc:
            return exc.message
        return None

    def sign_in(self, name: str, password: str) -> str:
        """Sign in to the console's broker as account ``name``: the broker checks the password and
        answers with a token, which the console keeps (beside console.json, owner only) and sends
        from then on. The password is never kept. Returns the account's name."""
        from ..client import Client  # (httpx: only the flows that talk to the server)

        rom = self.rom()
        url = self.url(rom)
        with Client(url, self.tls(rom), account=(name, password)) as c:
            answer = c.sign_in()
        atomic_write(
            self.root / "account.json",
            json.dumps({"name": answer.account, "token": answer.token}).encode(),
            mode=0o600,
        )
        return answer.account

    def account(self) -> tuple[str, str] | None:
        """(name, token) of the broker account this console pays with, or None."""
        path = self.root / "account.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return str(data["name"]), str(data["token"])
        except (OSError, ValueError, KeyError, TypeError):
            raise FileError(
                path, "not a console account file (one from before tokens holds a password: sign in again)"
            ) from None

    def token(self) -> str | None:
        account = self.account()
        return account[1] if account else None
