"""What the licensing server and the broker share of HTTP: errors as JSON, body reading, serving.

Every failure of a request becomes one status and one JSON line ``{"error", "message"}`` in one
place (:func:`error_response`); request bodies are read with a size bound and parsed strictly
(:func:`read_body`); :func:`serve_app` serves an ASGI app over TLS with hypercorn's trio worker.
The console endpoints' table (:data:`CONSOLE_ENDPOINTS`) is here too: the server serves them, and
a broker relays the same ones.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import resource
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

import trio
from hypercorn.config import Config
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import pki
from . import protocol as p
from .errors import (
    AlreadyExists,
    Forbidden,
    InputError,
    InUseError,
    NotFound,
    Refusal,
    RequestRefused,
    ServerError,
    TooManyAttempts,
    Unprocessable,
    VhwError,
)

log = logging.getLogger(__name__)


def trust_header(trust: p.Trust) -> list[tuple[bytes, bytes]]:
    """The header of every answer that names the CAs this service announces (their digest): a
    console whose own set differs asks ``/v1/trust`` for them (a CA rollover). None when it names
    no CA."""
    return [(p.TRUST_HEADER.encode(), pki.anchors_digest(trust.anchors).encode())] if trust.anchors else []


@dataclass(frozen=True)
class ConsoleEndpoint:
    """An endpoint a console calls: on the licensing server (direct mode) or on a broker."""

    path: str
    request: type
    response: type
    summary: str


CONSOLE_ENDPOINTS = (
    ConsoleEndpoint("/v1/console/register", p.RegisterRequest, p.RegisterResponse, "User registration (S1-S7)"),
    ConsoleEndpoint(
        "/v1/console/acquire", p.AcquireRequest, p.AcquireResponse, "MID registration and key acquisition (S11-S17)"
    ),
    ConsoleEndpoint(
        "/v1/console/purchase",
        p.PurchaseRequest,
        p.AcquireResponse,
        "A license bought for a disc without a MID (FIG. 15; through a broker)",
    ),
    ConsoleEndpoint(
        "/v1/console/confirm", p.ConfirmRequest, p.Done, "The copy is complete: the MID's flag becomes final"
    ),
)


class ApiError(Exception):
    """A request refused at the HTTP level: its status, a stable code and one line (and, for a
    503, how long to wait: ``retry_after`` seconds)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


def error_json(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(p.encode(p.ErrorBody(code, message[:500])), status_code=status, headers=headers)


#: the service's refusals by meaning, as HTTP statuses (the one place that says which)
_REFUSED_STATUS: dict[type[RequestRefused], int] = {
    NotFound: 404,
    AlreadyExists: 409,
    Forbidden: 403,
    Unprocessable: 422,
    TooManyAttempts: 429,
}


def error_response(exc: BaseException) -> JSONResponse:
    """Every failure of a request, mapped to one status and one line: the one place where domain
    errors become HTTP statuses (the CLI's exit codes are in :mod:`vhw.errors`)."""
    if isinstance(exc, Refusal):
        return error_json(403, exc.code, exc.text)
    if isinstance(exc, ApiError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return error_json(exc.status, exc.code, exc.message, headers)
    if isinstance(exc, RequestRefused):
        return error_json(_REFUSED_STATUS[type(exc)], "refused", exc.message)
    if isinstance(exc, p.ProtocolError):
        return error_json(422, "invalid-request", str(exc))
    if isinstance(exc, ServerError):
        return error_json(exc.status or 400, "refused", exc.message)
    if isinstance(exc, HTTPException):
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return error_json(exc.status_code, code, str(exc.detail), exc.headers)  # e.g. 405's Allow
    log.exception("internal error while serving a request")
    return error_json(500, "internal-error", "internal server error")


DRAIN_LIMIT = 1024 * 1024  # an oversize body is read and dropped up to here, so the 413 arrives


async def too_large(request: Request, seen: int) -> ApiError:
    """Discard the rest of an oversize body (up to DRAIN_LIMIT) so the client reads our answer
    instead of a reset; past that the connection is simply closed."""
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > DRAIN_LIMIT:
            break
    return ApiError(413, "too-large", f"request body over {p.MAX_BODY} bytes")


async def drain(request: Request) -> None:
    """Read what is left of a request's body (up to DRAIN_LIMIT) before answering early (401,
    403, ...): a body left unread makes the connection unusable for the client's next request."""
    try:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break
    except Exception:  # consumed already, or the client is gone: nothing to drain
        pass


async def read_body(request: Request) -> object:
    """The request's JSON body, at most ``MAX_BODY`` bytes, or :class:`ApiError`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > p.MAX_BODY):
        raise await too_large(request, 0)
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported-media-type", "the body must be application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > p.MAX_BODY:
            raise await too_large(request, len(body))
    try:
        return json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad-json", "the body is not valid JSON") from None


def _no_constants(name: str) -> NoReturn:
    raise ValueError(name)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def raise_file_limit() -> None:
    """Every connection is a file descriptor: allow as many as the system lets this process have
    (Debian's default soft limit, 1024, would cap a busy server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_app(
    app: ASGIApp,
    *,
    listen: tuple[str, int],
    certfile: Path,
    keyfile: Path,
    client_ca: Path | None = None,
    reuse_port: bool = False,
    ready: Callable[[str], None] | None = None,
    insecure: tuple[str, int] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app over TLS with hypercorn's trio worker until SIGINT/SIGTERM (and over
    plain HTTP at ``insecure``, where the app answers only what it allows there)."""
    raise_file_limit()

    host, port = listen
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if reuse_port:
        sock = reuse_port_socket(host, port)
        config.bind = [f"fd://{sock.fileno()}"]
    if insecure is not None:
        config.insecure_bind = [
            f"[{insecure[0]}]:{insecure[1]}" if ":" in insecure[0] else f"{insecure[0]}:{insecure[1]}"
        ]
    config.certfile = str(certfile)
    config.keyfile = str(keyfile)
    if client_ca is not None:
        config.ca_certs = str(client_ca)
        config.verify_mode = ssl.CERT_REQUIRED
    config.accesslog = None
    config.errorlog = logging.getLogger("vhw.server.hypercorn")
    # HTTP/1.1 only, offered to every client: nothing here needs HTTP/2, and hypercorn's HTTP/2
    # drops a connection whose client still sends a body after its answer (a 413, say). A client
    # that speaks HTTP/2 all the same reaches it, and costs itself its connection (OneConnection).
    config.alpn_protocols = ["http/1.1"]
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # a client that stops sending is dropped
    config.graceful_timeout = 5
    config.ssl_handshake_timeout = 10
    config.backlog = 1024
    shutdown = trio.Event()
    try:
        await _serve(app, config, shutdown, ready, task_status)
    except* OSError as group:  # binding failed: a person's mistake (busy port, foreign address)
        first = _leaf(group)
        where = listen
        if insecure is not None and first.filename is None and _bound(listen):  # the plain-HTTP address failed
            where = insecure
        raise listen_error(where, first) from None


class OneConnection(TCPServer):
    """hypercorn's connection, whose failure ends that connection alone.

    hypercorn lets some errors of its HTTP layer out of a connection's task, and trio then ends
    the whole server with them: any client could stop the service with one request (a websocket
    upgrade with bytes after it, hypercorn issue #225; HTTP/2 data after the answer, #329). Here
    such an error closes that connection (hypercorn's own ``finally`` has closed it already), says
    so in one line, and the server goes on. Cancellation still passes through."""

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as group:
            first = _leaf(group)
            log.warning(
                "a connection was dropped: the HTTP layer failed on it (%s: %s)",
                type(first).__name__,
                str(first)[:200],
            )


# hypercorn's trio worker makes each connection from this name; every server and broker of vhw
# serves through it (:func:`serve_app`)
hypercorn_run.TCPServer = OneConnection  # type: ignore[attr-defined]  # (a name hypercorn imports, not exports)


E = TypeVar("E", bound=BaseException)


def _leaf(group: BaseExceptionGroup[E]) -> E:
    """The first error inside ``group`` (inside nested groups too; a group is never empty)."""
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _bound(address: tuple[str, int]) -> bool:
    """Whether ``address`` can be bound now (the TLS address of a run whose other address failed)."""
    if address[1] == 0:
        return True
    try:
        with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
        return True
    except OSError:
        return False


def listen_error(where: tuple[str, int], exc: OSError) -> VhwError:
    """One line for an address the server cannot listen on: in use (exit 7), or not one it may
    listen on (exit 17)."""
    reason = {
        errno.EADDRINUSE: "address in use",
        errno.EADDRNOTAVAIL: "this host has no such address",
        errno.EACCES: "permission denied (ports below 1024 need root)",
    }.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
    host, port = where
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return InUseError(f"cannot listen on {shown}: {reason} (another process listens there)")
    return InputError(f"cannot listen on {shown}: {reason}")


async def _serve(
    app: ASGIApp,
    config: Config,
    shutdown: trio.Event,
    ready: Callable[[str], None] | None,
    task_status: trio.TaskStatus[str],
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, shutdown)
        # (hypercorn's ASGI types are stricter than Starlette's; the app is an ASGI 3 app all the same)
        serving = partial(hypercorn_serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
        binds = await nursery.start(serving)
        url = next((b for b in binds if b.startswith("https")), binds[0])
        if ready:
            ready(url)
        task_status.started(url)
        await shutdown.wait()
        # hypercorn returns once open requests are done; then stop watching signals
        nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout + 1


async def _on_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            shutdown.set()
            return


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening address that several processes can bind (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


# -- the access log: one line per request, the same for the server and the broker ------------------------


def loggable(path: str) -> str:
    """The path as the access log shows it: at most 200 characters, never a download's token (the
    link of a reissued card's file) and never a User ID (the repair console's user pages)."""
    for secret in ("/console/card/", "/console/reissued/"):
        if path.startswith(secret):
            return secret + "(token)"
    return USER_IN_PATH.sub("/(user)", path[:200])


USER_IN_PATH = re.compile(r"/US-[0-9A-Za-z-]+", re.IGNORECASE)


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a short token, else a fresh one: it is in the access
    log line and the answer's headers, to match one with the other."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
                return text
            break
    return uuid.uuid4().hex[:16]


def log_access(
    logger: logging.Logger, method: str, path: str, status: int, elapsed: float, role: str, rid: str
) -> None:
    """One access line: as text, and with its fields for ``--log-format json`` (vhw.server.logs)."""
    logger.info(
        "%s %s %d %.1fms role=%s id=%s",
        method,
        path,
        status,
        elapsed * 1000,
        role,
        rid,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "role": role,
            "request_id": rid,
        },
    )


class AccessLog:
    """An ASGI app wrapped so that every request gets an access line (``logger``) and an
    X-Request-ID in its answer. The app may name who called in ``scope["state"]["role"]``.
    ``headers`` go into every answer too; ``observe(method, path, status, seconds)`` is told of
    every request (the server's metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        logger: logging.Logger,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        observe: Callable[[str, str, int, float], None] | None = None,
    ):
        self.app, self.logger, self.headers, self.observe = app, logger, list(headers), observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        rid = request_id(scope)
        state["request_id"], state["role"] = rid, "-"
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode()), *self.headers]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope["method"], scope["path"], status[0], elapsed)
            log_access(self.logger, scope["method"], loggable(scope["path"]), status[0], elapsed, state["role"], rid)
