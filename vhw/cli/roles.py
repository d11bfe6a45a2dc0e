"""Calling the server as a role (manufacturer, publisher, operator): ``--credential FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import Client

import click

from ..errors import FileError
from .params import FILE

credential_option = click.option(
    "--credential",
    type=FILE,
    envvar="VHW_CREDENTIAL",
    help="Register with the licensing server using this role credential (from `vhw server init`).",
)
server_option = click.option("--server", "server_url", help="Server URL (default: the credential's).")


def role_client(credential: Path, server_url: str | None, role: str) -> Client:
    from ..client import (  # (httpx and the server's modules: only when calling it)
        Client,
        tls_context,
    )
    from ..server.credentials import Credential  # (loaded only by the commands that need it: start-up time)

    cred = Credential.load(credential)
    if cred.role != role:
        raise FileError(credential, f"is a {cred.role} credential; this needs the {role}'s")
    return Client(
        server_url or cred.server, tls_context(ca_pem=cred.ca, client_cert=cred.client_cert), token=cred.token
    )


def register_with_server(credential: Path | None, server_url: str | None, path: str, msg: object) -> None:
    """The manufacturer's registration of a new ID, done before the device file is written."""
    from .. import protocol as proto

    if credential:
        with role_client(credential, server_url, "manufacturer") as c:
            c.call(path, msg, proto.Done)
