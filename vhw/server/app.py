"""The licensing server over HTTPS: a small Starlette app served by hypercorn's trio worker.

The app is a table of endpoints (:data:`ENDPOINTS`): path, the role allowed to call it, the
request and response messages, and the :class:`~vhw.server.licensing.Licensing` call behind it. One
handler does the rest for all of them, in this order: authenticate the caller, read at most
``MAX_BODY`` bytes, parse JSON, decode the message, run the call in a worker thread (database
calls block; the trio loop never does), encode the answer. Every failure is mapped in one place
(:func:`_error_response`) to a 4xx with ``{"error", "message"}``; only a bug gives a 500, and even
then the server goes on serving.

Roles: ``console`` endpoints need no credential (a console proves itself with its card's keys) and
exist only in direct mode; every other endpoint needs the bearer token of exactly its role.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import anyio
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from .. import protocol as p
from ..errors import Refusal, ServerError, StateError
from . import metrics
from .home import ServerHome, token_hash
from .licensing import Licensing
from .store import Conflict, PostgresStore

log = logging.getLogger(__name__)
access = logging.getLogger("vhw.server.access")  # one line per request (--log-format)

CONSOLE = "console"
PROCESS = str(os.getpid())


@dataclass(frozen=True)
class Endpoint:
    path: str
    role: str  # "console", "public", or a credential role
    request: type | None
    response: type
    call: Callable
    summary: str
    method: str = "POST"


def _device(table: str, attr: str):
    return lambda lic, actor, msg: lic.register_device(actor, table, getattr(msg, attr), msg.public_key)


ENDPOINTS: list[Endpoint] = [
    Endpoint("/v1/health", "public", None, p.Health, None, "Is the server up, and in which mode", "GET"),
    Endpoint(
        "/v1/console/register",
        CONSOLE,
        p.RegisterRequest,
        p.RegisterResponse,
        lambda lic, a, m: lic.register(a, m),
        "User registration (S1-S7)",
    ),
    Endpoint(
        "/v1/console/acquire",
        CONSOLE,
        p.AcquireRequest,
        p.AcquireResponse,
        lambda lic, a, m: lic.broker_acquire(a, m),
        "MID registration and key acquisition (S11-S17)",
    ),
    Endpoint(
        "/v1/console/confirm",
        CONSOLE,
        p.ConfirmRequest,
        p.Done,
        lambda lic, a, m: lic.confirm(a, m),
        "The copy is complete: the MID's flag becomes final",
    ),
    Endpoint(
        "/v1/broker/register",
        "broker",
        p.RegisterRequest,
        p.RegisterResponse,
        lambda lic, a, m: lic.register(a, m),
        "User registration relayed by the broker",
    ),
    Endpoint(
        "/v1/broker/acquire",
        "broker",
        p.AcquireRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.broker_acquire(a, m),
        "Key acquisition relayed by the broker (FIG. 15)",
    ),
    Endpoint(
        "/v1/broker/refetch",
        "broker",
        p.AcquireRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.refetch(a, m),
        "The keys of a MID this user flagged, unconfirmed; flags nothing",
    ),
    Endpoint(
        "/v1/broker/purchase",
        "broker",
        p.PurchaseRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.purchase(a, m),
        "A license bought for a disc without a MID (FIG. 15)",
    ),
    Endpoint(
        "/v1/broker/confirm",
        "broker",
        p.ConfirmRequest,
        p.Done,
        lambda lic, a, m: lic.confirm(a, m),
        "Install confirmation relayed by the broker",
    ),
    Endpoint(
        "/v1/manufacturer/consoles",
        "manufacturer",
        p.RegisterConsole,
        p.Done,
        _device("consoles", "client_id"),
        "Register a console's Client ID and public key",
    ),
    Endpoint(
        "/v1/manufacturer/hdds",
        "manufacturer",
        p.RegisterHdd,
        p.Done,
        _device("hdds", "hdd_id"),
        "Register an HDD's HDD-ID and public key",
    ),
    Endpoint(
        "/v1/manufacturer/cards",
        "manufacturer",
        p.RegisterCard,
        p.Done,
        lambda lic, a, m: lic.register_card(a, m),
        "Register a memory card's MC-ID and MC-Key",
    ),
    Endpoint(
        "/v1/publisher/titles",
        "publisher",
        p.RegisterTitle,
        p.Done,
        lambda lic, a, m: lic.register_title(a, m),
        "Register a title's Content-Key and digest",
    ),
    Endpoint(
        "/v1/publisher/media",
        "publisher",
        p.RegisterMedia,
        p.Done,
        lambda lic, a, m: lic.register_media(a, m),
        "Register the MIDs of pressed discs",
    ),
    Endpoint(
        "/v1/operator/audit",
        "operator",
        p.AuditQuery,
        p.AuditPage,
        lambda lic, a, m: lic.audit(m),
        "Read the audit log",
    ),
    Endpoint(
        "/v1/operator/repair",
        "operator",
        p.RepairRequest,
        p.RepairResponse,
        lambda lic, a, m: lic.repair(a, m),
        "Re-register a repaired or exchanged device (FIG. 13)",
    ),
    Endpoint(
        "/v1/operator/reissue",
        "operator",
        p.ReissueRequest,
        p.ReissueResponse,
        lambda lic, a, m: lic.reissue(a, m),
        "Reissue a damaged or lost memory card (FIG. 14)",
    ),
]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(p.encode(p.ErrorBody(code, message[:500])), status_code=status, headers=headers)


def _error_response(exc: BaseException) -> JSONResponse:
    """Every failure of a request, mapped to one status and one line."""
    if isinstance(exc, Refusal):
        return _json(403, exc.code, exc.text)
    if isinstance(exc, ApiError):
        return _json(exc.status, exc.code, exc.message)
    if isinstance(exc, p.ProtocolError):
        return _json(422, "invalid-request", str(exc))
    if isinstance(exc, ServerError):
        return _json(exc.status or 400, "refused", exc.message)
    if isinstance(exc, HTTPException):
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return _json(exc.status_code, code, str(exc.detail), exc.headers)  # e.g. 405's Allow
    log.exception("internal error while serving a request")
    return _json(500, "internal-error", "internal server error")


STORE_THREADS = 4  # for the requests not batched: a few threads contend less for the GIL than dozens
DRAIN_LIMIT = 1024 * 1024  # an oversize body is read and dropped up to here, so the 413 arrives


async def _too_large(request: Request, seen: int) -> ApiError:
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


async def _read_body(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > p.MAX_BODY):
        raise await _too_large(request, 0)
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported-media-type", "the body must be application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > p.MAX_BODY:
            raise await _too_large(request, len(body))
    try:
        return json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad-json", "the body is not valid JSON") from None


def _no_constants(name: str):
    raise ValueError(name)


class App:
    """The Starlette application around one :class:`Licensing`: the endpoints, ``/openapi.json``
    and ``/metrics``, an access log line and the metrics of every request."""

    def __init__(
        self,
        lic: Licensing,
        *,
        mode: str = "direct",
        console_key: bytes | None = None,
        console_files: Path | None = None,
    ):
        self.lic = lic
        self.mode = mode
        self.batcher = Batcher(lic)
        self.limiter = anyio.CapacityLimiter(STORE_THREADS)
        routes = [Route(ep.path, partial(self.handle, ep), methods=[ep.method]) for ep in ENDPOINTS]
        routes.append(Route("/openapi.json", self.openapi, methods=["GET"]))
        routes.append(Route("/metrics", self.metrics, methods=["GET"]))
        self._paths = {r.path for r in routes}
        if console_key is not None and console_files is not None:  # the repair center's web console
            from starlette.routing import Mount

            from ..webconsole.repair import RepairConsole

            routes.append(Mount("/console", app=RepairConsole(lic, console_key, console_files).app()))
        self.starlette = Starlette(
            routes=routes,
            exception_handlers={HTTPException: lambda req, exc: _error_response(exc)},
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        if scope.get("scheme") == "http" and scope["path"] != "/metrics":
            # the plain-HTTP address of --metrics-listen serves the metrics and nothing else
            await JSONResponse(
                p.encode(p.ErrorBody("not-found", "this address serves /metrics only")), status_code=404
            )(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        rid = _request_id(scope)
        state["request_id"], state["role"] = rid, "-"
        status = [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", rid.encode()),
                    (b"x-vhw-process", PROCESS.encode()),
                ]
            await send(message)

        try:
            await self.starlette(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            path = scope["path"]
            endpoint = path if path in self._paths else "/console" if path.startswith("/console/") else "other"
            metrics.REQUESTS.labels(endpoint, scope["method"], str(status[0])).inc()
            metrics.LATENCY.labels(endpoint).observe(elapsed)
            shown = _loggable(scope["path"])
            access.info(
                "%s %s %d %.1fms role=%s id=%s",
                scope["method"],
                shown,
                status[0],
                elapsed * 1000,
                state["role"],
                rid,
                extra={
                    "method": scope["method"],
                    "path": shown,
                    "status": status[0],
                    "duration_ms": round(elapsed * 1000, 2),
                    "role": state["role"],
                    "request_id": rid,
                },
            )

    async def openapi(self, request: Request) -> Response:
        return Response(openapi_text(), media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        if request.scope.get("scheme") != "http":  # over TLS: the operator's credential
            try:
                request.scope["state"]["role"] = await self._credential(request, "operator", "/metrics")
            except ApiError as exc:
                return _error_response(exc)
        if isinstance(self.lic.store, PostgresStore):
            metrics.pool_stats(self.lic.store.pool_stats())
        return Response(await anyio.to_thread.run_sync(metrics.generate), media_type=metrics.CONTENT_TYPE)

    async def authenticate(self, request: Request, ep: Endpoint) -> str:
        if ep.role == "public":
            return "anyone"
        if ep.role == CONSOLE:
            if self.mode == "broker":
                raise ApiError(403, "broker-only", "this server serves users only through the broker")
            return CONSOLE
        return await self._credential(request, ep.role, ep.path)

    async def _credential(self, request: Request, role: str, path: str) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "this endpoint needs a credential (Authorization: Bearer ...)")
        row = await anyio.to_thread.run_sync(self._lookup, token.strip())
        if row is None:
            raise ApiError(401, "unauthenticated", "unknown credential")
        found, name = row
        if found != role:
            raise ApiError(403, "forbidden", f"a {found} credential cannot call {path}")
        return f"{found}:{name}"

    def _lookup(self, token: str) -> tuple[str, str] | None:
        # Looked up by SHA-256: the database never holds a token, and the comparison is of hashes.
        with self.lic.store.transaction() as tx:
            row = tx.one("SELECT role, name FROM credentials WHERE token_hash = ?", token_hash(token))
        return (row[0], row[1]) if row else None

    async def handle(self, ep: Endpoint, request: Request) -> Response:
        try:
            actor = await self.authenticate(request, ep)
            request.scope["state"]["role"] = actor.split(":", 1)[0]
            if ep.request is None:
                result = p.Health("ok", self.mode, __version__)
            else:
                msg = p.decode(ep.request, await _read_body(request))
                if ep.path in BATCHED and self.batcher.running:
                    result = await self.batcher.call(ep.call, actor, msg)
                else:
                    result = await anyio.to_thread.run_sync(ep.call, self.lic, actor, msg, limiter=self.limiter)
                _count(ep, result)
            response = JSONResponse(p.encode(result, ep.response))  # (a console's acquisition: without first_issue)
        except Exception as exc:  # mapped, never escaping: the server keeps serving
            await drain(request)
            _count_failure(exc)
            response = _error_response(exc)
        return response


#: The consoles' and the broker's calls: many at once under load, each a short transaction.
BATCHED = {ep.path for ep in ENDPOINTS if ep.role in (CONSOLE, "broker")}


class Batcher:
    """Runs the calls that arrive together as one batch, in one worker thread, inside one store
    group (:meth:`vhw.server.store.Store.group`): with SQLite, one commit (one fsync) for all of them.

    A batch takes what is waiting when the thread is free (up to MAX), so a lone request is not
    delayed and a crowd shares its commits. Each call still succeeds or fails alone (a savepoint
    each); every answer waits for its batch's commit. One thread instead of one per request also
    spares the interpreter's lock the switching between dozens of threads.
    """

    MAX = 64

    def __init__(self, lic: Licensing):
        self.lic = lic
        self.running = False
        self._send, self._receive = trio.open_memory_channel(math.inf)

    async def call(self, fn, actor: str, msg):
        done = trio.Event()
        box: list = []
        await self._send.send((fn, actor, msg, done, box))
        await done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                items = [await self._receive.receive()]
                while len(items) < self.MAX:
                    try:
                        items.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    results = await trio.to_thread.run_sync(self._run_batch, items)
                except Exception as exc:  # the commit failed: every call of the batch did
                    results = [(False, exc)] * len(items)
                for (_, _, _, done, box), result in zip(items, results, strict=True):
                    box.append(result)
                    done.set()
        finally:
            self.running = False

    def _run_batch(self, items) -> list:
        results = []
        with self.lic.store.group():
            for fn, actor, msg, _, _ in items:
                try:
                    results.append((True, fn(self.lic, actor, msg)))
                except Exception as exc:
                    results.append((False, exc))
        return results


def _loggable(path: str) -> str:
    """The path as the access log shows it: at most 200 characters, and never a download's token
    (the link of a reissued card's file)."""
    if path.startswith("/console/card/"):
        return "/console/card/(token)"
    return path[:200]


def _request_id(scope) -> str:
    """The client's X-Request-ID when it is a short token, else a fresh one: it is in the access
    log line and the answer's headers, to match one with the other."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
                return text
            break
    return uuid.uuid4().hex[:16]


_ACQUIRING = {"/v1/console/acquire", "/v1/broker/acquire", "/v1/broker/refetch", "/v1/broker/purchase"}


def _count(ep: Endpoint, result) -> None:
    if ep.path in _ACQUIRING:
        metrics.KEYS_ISSUED.inc()
        first = getattr(result, "first_issue", None)
        kind = "purchased" if ep.path.endswith("purchase") else "refetched" if first is False else "flagged"
        metrics.ACQUISITIONS.labels(kind).inc()


def _count_failure(exc: BaseException) -> None:
    if isinstance(exc, Refusal):
        metrics.REFUSALS.labels(exc.code).inc()
    elif isinstance(exc, Conflict):
        metrics.STORE_ERRORS.labels("conflict").inc()
    elif not isinstance(exc, (ApiError, p.ProtocolError, ServerError, HTTPException)):
        metrics.STORE_ERRORS.labels("error").inc()


def openapi_document() -> dict:
    """The OpenAPI 3 description of every endpoint, generated from the message declarations."""
    schemas: dict[str, dict] = {}

    def ref(cls) -> dict:
        if cls.__name__ not in schemas:
            schemas[cls.__name__] = p.schema(cls)
            for x in p._fields(cls):
                codec = x.metadata["codec"]
                inner = getattr(codec, "item", codec)
                if isinstance(inner, p.MessageCodec):
                    ref(inner.cls)
        return {"$ref": f"#/components/schemas/{cls.__name__}"}

    error = {"description": "error", "content": {"application/json": {"schema": ref(p.ErrorBody)}}}
    paths = {}
    for ep in ENDPOINTS:
        op: dict = {
            "summary": ep.summary,
            "operationId": ep.path.strip("/").replace("/", "_"),
            "responses": {
                "200": {"description": "success", "content": {"application/json": {"schema": ref(ep.response)}}}
            },
        }
        if ep.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(ep.request)}}}
            # 403: a refusal (one of the patent's messages) or a role's limit; 404/409: an ID the
            # server does not know, or knows otherwise; 429: too many failed User IDs for a card
            op["responses"].update({code: error for code in ("400", "403", "404", "409", "413", "415", "422", "429")})
        if ep.role not in ("public", CONSOLE):
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = error
        op["tags"] = [ep.role]
        paths[ep.path] = {ep.method.lower(): op}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vhw licensing server",
            "version": __version__,
            "description": "Registration, key acquisition and role endpoints of the vhw licensing server.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi_text() -> str:
    return resources.files("vhw").joinpath("openapi.json").read_text()


# -- running ------------------------------------------------------------------------------------


CHAIN_EVERY = 2.0  # seconds between runs of the audit chainer (entries wait this long unchained)


async def serve(
    home: ServerHome,
    *,
    listen: tuple[str, int] | None = None,
    database: str | None = None,
    ready: Callable[[str], None] | None = None,
    reuse_port: bool = False,
    metrics_listen: tuple[str, int] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the licensing API until SIGINT/SIGTERM (or cancellation); then finish open requests.

    ``reuse_port``: bind with SO_REUSEPORT, so that several processes serve one port (the kernel
    spreads the connections over them). ``metrics_listen``: also serve ``/metrics`` (only) over
    plain HTTP there, without a credential. The audit chainer runs beside the server, and once
    more when it stops.
    """
    cfg = home.config()
    store = await trio.to_thread.run_sync(home.store, database)
    try:
        await trio.to_thread.run_sync(store.migrate)
        await trio.to_thread.run_sync(home.check_master_key, store)
        from ..webconsole.web import session_key

        app = App(
            home.licensing(store),
            mode=cfg.mode,
            console_key=session_key(home.path("console-session.key")),
            console_files=home.path("console-files"),
        )
        chainer = home.chainer(store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chain_audit, chainer)
            nursery.start_soon(app.batcher.run)
            await serve_app(
                app,
                listen=listen or _split(cfg.listen),
                certfile=home.path("server.pem"),
                keyfile=home.path("server-key.pem"),
                # FIG. 15: in broker mode the server is not reachable from users: only platform-issued
                # clients (the broker, the roles' tools) complete a TLS handshake
                client_ca=home.path("ca.pem") if cfg.mode == "broker" else None,
                reuse_port=reuse_port,
                ready=ready,
                insecure=metrics_listen,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(chainer.run)  # what the last requests wrote
    finally:
        store.close()


async def _chain_audit(chainer) -> None:
    while True:
        await trio.sleep(CHAIN_EVERY)
        try:
            await trio.to_thread.run_sync(chainer.run)
        except Exception:  # the next run tries again; the server goes on serving
            log.exception("chaining the audit log failed")


def raise_file_limit() -> None:
    """Every connection is a file descriptor: allow as many as the system lets this process have
    (Debian's default soft limit, 1024, would cap a busy server)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_app(
    app,
    *,
    listen: tuple[str, int],
    certfile: Path,
    keyfile: Path,
    client_ca: Path | None = None,
    reuse_port: bool = False,
    ready: Callable[[str], None] | None = None,
    insecure: tuple[str, int] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app over TLS with hypercorn's trio worker until SIGINT/SIGTERM (and over
    plain HTTP at ``insecure``, where the app answers only what it allows there)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    raise_file_limit()

    host, port = listen
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if reuse_port:
        sock = _reuse_port_socket(host, port)
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
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.keep_alive_timeout = 30
    config.read_timeout = 30  # a client that stops sending is dropped
    config.graceful_timeout = 5
    config.ssl_handshake_timeout = 10
    config.backlog = 1024
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, shutdown)
        binds = await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=shutdown.wait))
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


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_workers(
    home: ServerHome,
    *,
    workers: int,
    listen: tuple[str, int] | None,
    database: str | None,
    ready: Callable[[str], None],
    log_format: str = "text",
    metrics_listen: tuple[str, int] | None = None,
) -> int:
    """Supervise ``workers`` server processes on one port until SIGINT/SIGTERM.

    Each worker is ``vhw server run --reuse-port`` on the same address (one database behind them
    all, PostgreSQL for real load). A worker that dies is replaced; a stop signal is passed on to
    all of them, and they finish their open requests first. They count their metrics into one
    multiprocess folder (``metrics/`` in the home, wiped at each start), so that any of them
    answers /metrics for all; the first one also serves ``metrics_listen``.
    """
    import shutil
    import subprocess
    import sys
    import time

    host, port = listen or _split(home.config().listen)
    holder = _reuse_port_socket(host, port)  # fixes the port (when 0 was asked) until all listen
    port = holder.getsockname()[1]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [
        sys.executable,
        "-m",
        "vhw",
        "server",
        "run",
        "--home",
        str(home.root),
        "--listen",
        address,
        "--reuse-port",
        "--log-format",
        log_format,
        *(["--db", database] if database else []),
    ]
    multiproc = home.path("metrics")
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir(mode=0o700)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    scrape = ["--metrics-listen", f"{metrics_listen[0]}:{metrics_listen[1]}"] if metrics_listen else []
    stopping = False

    def start(first: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(argv + (scrape if first else []), stdout=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.kill()
            raise StateError(f"a server worker did not start ({line.strip() or 'no output'})")
        return proc

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(first=i == 0) for i in range(workers)]
    holder.close()
    ready(f"https://{address} ({workers} processes: {', '.join(str(p.pid) for p in procs)})")
    try:
        while not stopping:
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stopping:
                    log.warning("server process %d ended (%s); starting another", proc.pid, proc.returncode)
                    metrics.mark_dead(proc.pid, str(multiproc))
                    procs[i] = start(first=i == 0)
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def write_openapi(path: Path) -> None:
    path.write_text(json.dumps(openapi_document(), indent=1, sort_keys=True) + "\n")
