"""Client of the licensing server (and the broker): httpx over TLS, trusting one CA only.

A console trusts exactly the platform CA in its ROM; a role's tool the CA in its credential file.
Plain ``http://`` is refused before any connection. Transport failures become
:class:`~vhw.errors.NetworkError`, answers with a patent refusal become that refusal, any other
error answer a :class:`~vhw.errors.ServerError` with the server's one-line message.
"""

from __future__ import annotations

import json
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx

from . import protocol as p
from .errors import REFUSALS, NetworkError, PaymentDeclined, ServerError, StateError

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def tls_context(
    ca_der: bytes | None = None, *, ca_pem: str | None = None, client_cert: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """A context that trusts only the given CA (DER from a ROM, or PEM from a credential), and
    presents ``client_cert`` (certificate PEM, key PEM) when given."""
    if not ca_der and not ca_pem:
        raise NetworkError(
            "no trust anchor: this console's ROM names no platform CA",
            hint="burn the ROM with `vhw console rom --ca ca.pem`",
        )
    try:
        ctx = ssl.create_default_context(cadata=ca_der if ca_der else ca_pem)
    except ssl.SSLError as exc:
        raise NetworkError(f"the trust anchor is not a usable CA certificate ({exc.reason})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        # ssl loads certificates from files only: a private folder, gone right after
        with tempfile.TemporaryDirectory(prefix="vhw-tls-") as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_text(client_cert[0])
            key.touch(0o600)
            key.write_text(client_cert[1])
            ctx.load_cert_chain(cert, key)
    return ctx


def check_url(url: str) -> str:
    if not url:
        raise NetworkError("no server address", hint="pass --server https://HOST:PORT")
    if url.startswith("http://"):
        raise NetworkError(f"refusing to talk to {url} over plain HTTP: the licensing server is https:// only")
    if not url.startswith("https://"):
        raise NetworkError(f"{url!r} is not an https:// server address")
    return url.rstrip("/")


class Client:
    """Calls endpoints with protocol messages; one connection pool, keep-alive."""

    def __init__(
        self,
        url: str,
        tls: ssl.SSLContext,
        *,
        token: str | None = None,
        account: tuple[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = check_url(url)
        headers = {"user-agent": "vhw"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        # a console talking to a broker sends its account (FIG. 15: user name and password)
        self._http = httpx.Client(
            base_url=self.url, verify=tls, headers=headers, timeout=timeout, transport=transport, auth=account
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, path: str, msg: Any, answer: type) -> Any:
        try:
            resp = self._http.post(path, json=p.encode(msg))
        except httpx.HTTPError as exc:
            raise network_error(self.url, exc) from None
        return read_answer(resp, answer)

    def sign_in(self) -> p.AccountToken:
        """A console's sign-in to a broker with its account (the client's ``account``): a token."""
        try:
            resp = self._http.post("/v1/account/token")
        except httpx.HTTPError as exc:
            raise network_error(self.url, exc) from None
        if resp.status_code == 404:
            raise StateError(
                f"{self.url} is not a broker: there are no accounts to sign in to",
                hint="set the console up with `--server BROKER_URL` first",
            )
        if resp.status_code == 401:
            raise ServerError(f"{self.url}: wrong account name or password", status=401)
        answer: p.AccountToken = read_answer(resp, p.AccountToken)
        return answer

    def get(self, path: str, answer: type) -> Any:
        try:
            resp = self._http.get(path)
        except httpx.HTTPError as exc:
            raise network_error(self.url, exc) from None
        return read_answer(resp, answer)


def read_answer(resp: httpx.Response, answer: type) -> Any:
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        raise ServerError(f"the server answered {resp.status_code} with no JSON", status=resp.status_code) from None
    if resp.status_code == 200:
        try:
            return p.decode(answer, body)
        except p.ProtocolError as exc:
            raise ServerError(f"malformed answer from the server ({exc})") from None
    try:
        err = p.decode(p.ErrorBody, body)
    except p.ProtocolError:
        raise ServerError(f"the server answered {resp.status_code}", status=resp.status_code) from None
    if err.error in REFUSALS and resp.status_code == 403:
        raise REFUSALS[err.error]()
    if resp.status_code == 402:
        raise PaymentDeclined(f"payment declined: {err.message}")
    raise ServerError(f"the server refused the request ({resp.status_code}): {err.message}", status=resp.status_code)


def network_error(url: str, exc: httpx.HTTPError) -> NetworkError:
    """One line for a transport failure, saying which of the usual causes it was."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, (ssl.SSLError, OSError)):
        cause = cause.__cause__ or cause.__context__
    if "CERTIFICATE_REQUIRED" in str(exc) or "certificate required" in str(exc):
        return NetworkError(
            f"{url} accepts only the platform's own clients (a server in broker mode);"
            " consoles reach it through the broker"
        )
    mismatch = (
        isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code == 62
    )  # X509_V_ERR_HOSTNAME_MISMATCH
    if mismatch or "Hostname mismatch" in str(exc) or "IP address mismatch" in str(exc):
        host = httpx.URL(url).host
        return NetworkError(
            f"{url}: the server's certificate does not name {host}",
            hint="use the name or address given to `vhw server init --url`, or add it with --host",
        )
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return NetworkError(
            f"{url}: the server's certificate is not signed by the trusted platform CA; refusing to talk to it"
        )
    if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "WRONG_VERSION_NUMBER" in str(exc):
        return NetworkError(f"{url}: TLS handshake failed (the server does not speak TLS, or not ours)")
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc):
        # TLS 1.3 reports a missing client certificate only after the handshake, as a hang-up
        return NetworkError(
            f"{url} hung up without answering: a licensing server in broker mode accepts only"
            " the platform's own clients (consoles reach it through the broker); if this is not"
            " such a server, try again"
        )
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"{url}: the server did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return NetworkError(f"cannot reach the licensing server at {url} ({_reason(exc)})")
    return NetworkError(f"{url}: the connection failed ({_reason(exc)})", hint="it is safe to run the command again")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
