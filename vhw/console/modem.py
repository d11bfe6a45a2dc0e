"""The console's modem: how it reaches its licensing server or, in broker mode, its broker
(FIG. 15): the address it uses, a client that trusts only the CA in its ROM, and the broker
account it signs in with (a token kept beside ``console.json``, never the password)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import protocol as p
from ..devices.files import atomic_write
from ..errors import FileError, VhwError
from ..formats.rom import Rom

if TYPE_CHECKING:  # (httpx loads only for the flows that talk to the server)
    from ..client import Client

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
        from ..client import (  # (httpx: only the flows that talk to the server)
            Client,
            tls_context,
        )

        return Client(self.url(rom), tls_context(rom.trust_anchor), token=self.token())

    def unreachable(self) -> str | None:
        """Why the console's server does not answer now (one try, a few seconds at most), or None
        when it does: said at set-up, which goes on without it."""
        import httpx  # (only the flows that talk to the server)

        from ..client import Client, tls_context

        rom = self.rom()
        url = self.url(rom)
        try:
            with Client(url, tls_context(rom.trust_anchor), retry_for=0, timeout=httpx.Timeout(5.0)) as c:
                c.get("/v1/health", p.Health)
        except VhwError as exc:
            return exc.message
        return None

    def sign_in(self, name: str, password: str) -> str:
        """Sign in to the console's broker as account ``name``: the broker checks the password and
        answers with a token, which the console keeps (beside console.json, owner only) and sends
        from then on. The password is never kept. Returns the account's name."""
        from ..client import Client, tls_context  # (httpx: only the flows that talk to the server)

        rom = self.rom()
        url = self.url(rom)
        with Client(url, tls_context(rom.trust_anchor), account=(name, password)) as c:
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
