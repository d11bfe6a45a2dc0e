"""Client of the licensing server (and the broker): httpx over TLS, trusting one CA only.

A console trusts exactly the platform CA in its ROM; a role's tool the CA in its credential file.
Plain ``http://`` is refused before any connection. Transport failures become
:class:`~vhw.errors.NetworkError`, answers with a patent refusal become that refusal, any other
error answer a :class:`~vhw.errors.ServerError` with the server's one-line message.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
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


def url_problem(url: str) -> str | None:
    """What is wrong with a server address as written (None: it has the form https://HOST[:PORT]),
    said before any connection is tried."""
    if url.startswith("http://"):
        return f"refusing to talk to {url} over plain HTTP: the licensing server is https:// only"
    if not url.startswith("https://"):
        return f"{url!r} is not an https:// server address"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return f"{url!r}: the port is not a number from 1 to 65535"
    if not parts.hostname or " " in url or (port is not None and port == 0):
        return f"{url!r} names no host (https://HOST:PORT)"
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        return f"{url!r} is more than a server address (https://HOST:PORT, nothing after it)"
    return None


def check_url(url: str) -> str:
    if not url:
        raise NetworkError("no server address", hint="pass --server https://HOST:PORT")
    problem = url_problem(url)
    if problem:
        raise NetworkError(problem)
    return url.rstrip("/")


RETRY_FOR = 30.0  # seconds a call keeps retrying while the licensing server is unavailable
REFUSED_FOR = 10.0  # ... and while nothing listens at its address (a restart; or a wrong URL)
# Calls whose repetition is harmless: a registration of the same device or title answers "done
# already", and an acquisition or confirm repeated by the disc's owner answers as the first did
# (the lost-answer path). Only these are repeated when a request may have been carried out
# (the connection dropped after sending, or the server could not tell whether it committed).
REPEATABLE = frozenset(
    {
        "/v1/console/acquire",
        "/v1/console/confirm",
        "/v1/broker/acquire",
        "/v1/broker/confirm",
        "/v1/broker/refetch",
        "/v1/manufacturer/cards",
        "/v1/manufacturer/consoles",
        "/v1/manufacturer/hdds",
        "/v1/publisher/titles",
        "/v1/publisher/media",
        "/v1/health",
    }
)


class Client:
    """Calls endpoints with protocol messages; one connection pool, keep-alive.

    While the server is unavailable (it cannot be reached, or it answers 503: busy, or its database
    failing over) a call is retried for up to ``retry_for`` seconds, with exponential backoff and
    jitter, honouring ``Retry-After``; ``notice`` is told once ("licensing server unavailable,
    retrying"). A call that may have been carried out is repeated only if it is in
    :data:`REPEATABLE`; otherwise the error says so.
    """

    def __init__(
        self,
        url: str,
        tls: ssl.SSLContext,
        *,
        token: str | None = None,
        account: tuple[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        retry_for: float | None = None,
        notice: Callable[[str], None] | None = None,
        after: Callable[[Client], None] | None = None,
    ):
        self.url = check_url(url)
        self.trust_seen: str | None = None  # the digest of the CAs the service announced (p.TRUST_HEADER)
        self._after = after  # told of this client when it is closed after a use that raised nothing
        if retry_for is None:  # (VHW_RETRY_SECONDS: how long, for every client of this process)
            retry_for = _seconds(os.environ.get("VHW_RETRY_SECONDS"), RETRY_FOR)
        self.retry_for = retry_for
        self._notice = notice if notice is not None else _to_stderr
        self._noticed = False
        headers = {"user-agent": "vhw"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        # a console talking to a broker sends its account (FIG. 15: user name and password)
        self._http = httpx.Client(
            base_url=self.url, verify=tls, headers=headers, timeout=timeout, transport=transport, auth=account
        )

    def close(self) -> None:
        self._http.close()

    def tell(self, line: str) -> None:
        """Say ``line`` where this client says its notices (standard error, by default)."""
        self._notice(line)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if kind is None and self._after is not None:
                self._after(self)
        finally:
            self.close()

    def call(self, path: str, msg: Any, answer: type) -> Any:
        return read_answer(self._send("POST", path, json=p.encode(msg)), answer)

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request, retried while the server is unavailable (see the class)."""
        start = time.monotonic()
        deadline: float | None = None  # set by the first failure: how long this call retries
        backoff = 0.25
        while True:
            failure: httpx.HTTPError | None = None
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.HTTPError as exc:
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                if not _transient(exc) or (sent and path not in REPEATABLE):
                    raise network_error(self.url, exc) from None
                failure = exc
                # nothing listening (a restart, or a wrong address) is retried for less long
                budget = self.retry_for if sent else min(self.retry_for, REFUSED_FOR)
                wait = backoff
            else:
                self.trust_seen = resp.headers.get(p.TRUST_HEADER, self.trust_seen)
                if resp.status_code != 503:
                    return resp
                if _error_code(resp) == "outcome-unknown" and path not in REPEATABLE:
                    return resp  # (read_answer names it: the caller checks before repeating it)
                budget = self.retry_for
                wait = max(backoff, _retry_after(resp))
            if deadline is None:
                deadline = start + budget
                if not self._noticed and budget > 0:
                    self._noticed = True
                    self._notice(f"licensing server at {self.url} unavailable, retrying (for up to {budget:.0f} s)")
            if time.monotonic() >= deadline:  # (as long as the notice said, and no longer)
                if failure is not None:
                    raise network_error(self.url, failure) from None
                return resp  # (the last 503: read_answer says what it was)
            time.sleep(min(random.uniform(0.5, 1.0) * wait, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 4.0)

    def sign_in(self) -> p.AccountToken:
        """A console's sign-in to a broker with its account (the client's ``account``): a token."""
        resp = self._send("POST", "/v1/account/token")
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
        return read_answer(self._send("GET", path), answer)


def _seconds(text: str | None, default: float) -> float:
    try:
        return max(0.0, float(text)) if text else default
    except ValueError:
        return default


def _transient(exc: httpx.HTTPError) -> bool:
    """A failure that waiting may cure (refused, reset, timed out), not one that it cannot (a
    certificate or TLS problem, a malformed URL)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return False
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if "CERTIFICATE" in text or "SSL" in text or "without sending a response" in text:
        return False
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def _to_stderr(line: str) -> None:
    print(f"vhw: {line}", file=sys.stderr, flush=True)


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers.get("retry-after", "1")), 0.1), 10.0)
    except ValueError:
        return 1.0


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
            f"{url}: the server's certificate is not signed by the trusted platform CA; refusing to talk to it",
            hint="if the platform rolled its CA over meanwhile, a console takes the new one from the operator"
            " with `vhw console trust --add CA.pem`; a role's tool needs a credential issued since",
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
