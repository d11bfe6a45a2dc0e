"""The licensing server over HTTPS: a small Starlette app served by hypercorn's trio worker.

:class:`App` serves the endpoint table (:mod:`vhw.server.endpoints`) with one handler, in this
order: authenticate the caller, read at most ``MAX_BODY`` bytes, parse JSON, decode the message,
run the call in a worker thread (database calls block; the trio loop never does) or in the batch
of the moment (:mod:`vhw.server.batcher`), encode the answer. Every failure is mapped in one place
(:func:`vhw.httpapi.error_response`) to a 4xx with ``{"error", "message"}``; only a bug gives a
500, and even then the server goes on serving. Around it, as ASGI middleware: the request ID, the
access log line and the metrics of every request. Web consoles are mounted onto it from above
(the CLI hands them to :func:`serve`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anyio
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from .. import protocol as p
from ..errors import Refusal, ServerError
from ..httpapi import (
    AccessLog,
    ApiError,
    drain,
    error_response,
    read_body,
    serve_app,
    split_listen,
    trust_header,
)
from . import metrics
from .auditlog import Chainer
from .batcher import Batcher
from .endpoints import BATCHED, CONSOLE, ENDPOINTS, Endpoint, openapi_text
from .home import ServerHome
from .licensing import Licensing
from .queries import Queries, token_hash
from .store import Conflict, PostgresStore, Unavailable

__all__ = ["serve"]


log = logging.getLogger(__name__)
access = logging.getLogger("vhw.server.access")  # one line per request (--log-format)

PROCESS = str(os.getpid())
STORE_THREADS = 4  # for the requests not batched: a few threads contend less for the GIL than dozens
HEALTH_EVERY = 0.5  # seconds /v1/health reuses its answer to "is the database writable?"
POOLED_THREADS = 16  # on PostgreSQL (under the pool's 20 connections): they mostly wait for the database
# Seconds a PostgreSQL call waits for its batch before it runs alone: longer than a batch of 64
# takes here under load, when each round trip also waits for the interpreter's lock (20 ms handed
# most calls to threads of their own, which cost more CPU than the batch: README, Performance).
# Past it the one thread does not keep up (a remote database's round trips, a synchronous
# standby's commits, a failover's timeouts), and calls run in parallel, each in a thread of its
# own, as all did before batches: the batch saves CPU, it never caps throughput.
PATIENCE = 0.25
#: makes the web console a server mounts at /console/ (given the service), or None
ConsoleFactory = Callable[[Licensing], Any]


class App:
    """The Starlette application around one :class:`Licensing`: the endpoints, ``/openapi.json``
    and ``/metrics``, an access log line and the metrics of every request."""

    def __init__(
        self,
        lic: Licensing,
        *,
        mode: str = "direct",
        mounts: Sequence[Mount] = (),
        trust: p.Trust | None = None,
    ):
        self.lic = lic
        self.trust = trust or p.Trust(())  # the CAs consoles trust: announced in every answer (x-vhw-trust)
        self.queries = Queries(lic.store)
        self.mode = mode
        # On SQLite a batch shares one commit (one fsync for all); on PostgreSQL each call commits
        # on its own connection, and a call held up past PATIENCE runs in a thread of its own: one
        # waiting out a failover holds up no other
        self.batcher = Batcher(lic, patience=None if lic.store.group_commits else PATIENCE)
        self._writable, self._asking = (float("-inf"), False), anyio.Lock()
        self.limiter = anyio.CapacityLimiter(STORE_THREADS if lic.store.group_commits else POOLED_THREADS)
        routes: list[BaseRoute] = [Route(ep.path, partial(self.handle, ep), methods=[ep.method]) for ep in ENDPOINTS]
        routes.append(Route("/openapi.json", self.openapi, methods=["GET"]))
        routes.append(Route("/metrics", self.metrics, methods=["GET"]))
        self._paths = {r.path for r in routes if isinstance(r, Route)}
        routes += mounts  # the repair center's web console, from above
        self.starlette = Starlette(
            routes=routes,
            exception_handlers={HTTPException: _http_error},
        )
        self.logged = AccessLog(
            self.starlette,
            access,
            headers=[(b"x-vhw-process", PROCESS.encode()), *trust_header(self.trust)],
            observe=self._observe,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        if scope.get("scheme") == "http" and scope["path"] != "/metrics":
            # the plain-HTTP address of --metrics-listen serves the metrics and nothing else
            await JSONResponse(
                p.encode(p.ErrorBody("not-found", "this address serves /metrics only")), status_code=404
            )(scope, receive, send)
            return
        await self.logged(scope, receive, send)

    def _observe(self, method: str, path: str, status: int, elapsed: float) -> None:
        endpoint = path if path in self._paths else "/console" if path.startswith("/console/") else "other"
        metrics.REQUESTS.labels(endpoint, method, str(status)).inc()
        metrics.LATENCY.labels(endpoint).observe(elapsed)

    async def openapi(self, request: Request) -> Response:
        return Response(openapi_text(), media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        if request.scope.get("scheme") != "http":  # over TLS: the operator's credential
            try:
                request.scope["state"]["role"] = await self._credential(request, "operator", "/metrics")
            except ApiError as exc:
                return error_response(exc)
        if isinstance(self.lic.store, PostgresStore):
            metrics.pool_stats(self.lic.store.pool_stats())
        metrics.DB_WRITABLE.set(1 if await self.writable() else 0)
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
        return self.queries.credential(token_hash(token))

    async def writable(self) -> bool:
        """Whether the database takes writes, asked at most every ``HEALTH_EVERY`` seconds (a load
        balancer's checks, or a crowd of consoles, cost the database nothing more)."""
        now = anyio.current_time()
        if now - self._writable[0] >= HEALTH_EVERY:
            async with self._asking:
                if now - self._writable[0] >= HEALTH_EVERY:  # (another task asked meanwhile)
                    value = await anyio.to_thread.run_sync(self.lic.store.writable, limiter=self.limiter)
                    self._writable = (anyio.current_time(), value)
        return self._writable[1]

    async def handle(self, ep: Endpoint, request: Request) -> Response:
        try:
            actor = await self.authenticate(request, ep)
            request.scope["state"]["role"] = actor.split(":", 1)[0]
            result: object
            if ep.response is p.Trust:
                result = self.trust
            elif ep.request is None or ep.call is None:
                result = p.Health("ok" if await self.writable() else "read-only", self.mode, __version__)
            else:
                msg: object = p.decode(ep.request, await read_body(request))
                request.scope["state"]["msg"] = msg  # (a refusal's audit entry names its card or disc)
                call = ep.call
                alone = partial(anyio.to_thread.run_sync, call, self.lic, actor, msg, limiter=self.limiter)
                if ep.path in BATCHED and self.batcher.running:
                    result = await self.batcher.call(call, actor, msg, alone)
                else:
                    result = await alone()
                if ep.finish is not None:  # (here, not in a thread: CPU under the GIL either way)
                    result = ep.finish(self.lic, result)
                _count(ep, result)
            response = JSONResponse(p.encode(result, ep.response))  # (a console's acquisition: without first_issue)
        except Unavailable as exc:  # a failover: the client retries (and a lost commit is refetched)
            await drain(request)
            log.warning("answered 503: %s%s", exc, " (it may have committed)" if exc.maybe_committed else "")
            metrics.STORE_ERRORS.labels("unavailable").inc()
            code = "outcome-unknown" if exc.maybe_committed else "unavailable"
            response = error_response(ApiError(503, code, UNAVAILABLE, retry_after=1))
        except Exception as exc:  # mapped, never escaping: the server keeps serving
            await drain(request)
            _count_failure(exc)
            if isinstance(exc, Refusal):  # (its own transaction: the refused one rolled back)
                await self._audit_refusal(ep, request, exc)
            response = error_response(exc)
        return response

    async def _audit_refusal(self, ep: Endpoint, request: Request, refusal: Refusal) -> None:
        """Write the refusal to the audit log (who asked, what for, which of the five): the
        dashboard counts them from there, across restarts. A refusal stays a refusal if the log
        cannot be written (said in the server's log)."""
        actor = request.scope.get("state", {}).get("role", "console")
        subject = _subject(request.scope.get("state", {}).get("msg"))
        try:
            await anyio.to_thread.run_sync(
                self.lic.record_refusal, actor, refusal.code, ep.path, subject, limiter=self.limiter
            )
        except Exception as exc:  # (Unavailable, say: the answer is the refusal all the same)
            log.warning("could not write a %s refusal to the audit log: %s", refusal.code, exc)


# Seconds PostgreSQL gives each statement of a request, a commit's wait for its synchronous standby
# included: a request is answered (503, the client retries) instead of hanging while a new primary
# has no standby yet, or a lock is held by a transaction that is itself stuck.
STATEMENT_TIMEOUT = 5.0
UNAVAILABLE = "the licensing database is unavailable for a moment (a failover?); try again shortly"
_ACQUIRING = {"/v1/console/acquire", "/v1/broker/acquire", "/v1/broker/refetch", "/v1/broker/purchase"}


def _subject(msg: object) -> str:
    """What a refused request was about, as the audit log names it: the card (MC-ID), or the disc."""
    for name in ("mc_id", "mid"):
        value = getattr(msg, name, None)
        if value is not None:
            return str(value)
    return "-"


def _count(ep: Endpoint, result: object) -> None:
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


CHAIN_EVERY = 2.0  # seconds between runs of the audit chainer (entries wait this long unchained)


async def serve(
    home: ServerHome,
    *,
    listen: tuple[str, int] | None = None,
    database: str | None = None,
    ready: Callable[[str], None] | None = None,
    reuse_port: bool = False,
    metrics_listen: tuple[str, int] | None = None,
    consoles: Callable[[Licensing], Sequence[Mount]] | None = None,
    pool_size: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the licensing API until SIGINT/SIGTERM (or cancellation); then finish open requests.
    ``consoles``: the web consoles to mount (made with the service this server runs).

    ``reuse_port``: bind with SO_REUSEPORT, so that several processes serve one port (the kernel
    spreads the connections over them). ``metrics_listen``: also serve ``/metrics`` (only) over
    plain HTTP there, without a credential. The audit chainer runs beside the server, and once
    more when it stops.
    """
    cfg = home.config()
    opening = partial(home.store, database, statement_timeout=STATEMENT_TIMEOUT, pool_size=pool_size)
    store = await trio.to_thread.run_sync(opening)
    try:
        await trio.to_thread.run_sync(store.migrate)
        await trio.to_thread.run_sync(home.keys.check, store)
        lic = home.licensing(store)
        app = App(lic, mode=cfg.mode, mounts=consoles(lic) if consoles else (), trust=home.pki.trust())
        chainer = home.chainer(store)
        for certificate, expires in home.pki.expiries().items():
            metrics.CERT_EXPIRY.labels(certificate).set(expires)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_chain_audit, chainer)
            nursery.start_soon(app.batcher.run)
            await serve_app(
                app,
                listen=listen or split_listen(cfg.listen),
                certfile=home.path("server.pem"),
                keyfile=home.path("server-key.pem"),
                # FIG. 15: in broker mode the server is not reachable from users: only platform-issued
                # clients (the broker, the roles' tools) complete a TLS handshake
                client_ca=home.pki.anchors_file() if cfg.mode == "broker" else None,
                reuse_port=reuse_port,
                ready=ready,
                insecure=metrics_listen,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(chainer.run)  # what the last requests wrote
    finally:
        store.close()


async def _chain_audit(chainer: Chainer) -> None:
    while True:
        await trio.sleep(CHAIN_EVERY)
        try:
            await trio.to_thread.run_sync(chainer.run)
            metrics.AUDIT_HEAD.set(chainer.head)
            metrics.AUDIT_CHAINED.set(time.time())
        except Unavailable as exc:  # a failover: the next run, on the new primary, goes on
            log.info("audit chaining waits for the database: %s", exc)
        except Exception:  # the next run tries again; the server goes on serving
            log.exception("chaining the audit log failed")


async def _http_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)
