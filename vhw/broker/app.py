"""The broker's HTTPS app: the consoles' ``/v1/console/...`` endpoints (checked against an account,
relayed, charged) and the staff's web console at ``/console/``; ``serve`` runs it."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from .. import protocol as p
from ..errors import NetworkError, PaymentDeclined, Refusal, ServerError
from ..httpapi import (
    CONSOLE_ENDPOINTS,
    AccessLog,
    ApiError,
    drain,
    error_json,
    error_response,
    read_body,
    serve_app,
    split_listen,
    trust_header,
)
from ..server.credentials import Credential
from .home import BrokerHome
from .service import Broker

__all__ = ["serve"]


access = logging.getLogger("vhw.broker.access")  # one line per request, as the server's

Handler = Callable[[Request], Awaitable[Response]]


class BrokerApp:
    """The consoles' side of the broker: the server's console endpoints, plus an account."""

    def __init__(self, broker: Broker, mounts: list[Mount] | None = None, trust: p.Trust | None = None):
        self.broker = broker
        self.trust = trust or p.Trust(())  # the platform CAs consoles trust, as the platform told the broker
        calls: dict[str, Callable[[str, Any], Any]] = {
            "/v1/console/register": broker.register,
            "/v1/console/acquire": broker.acquire,
            "/v1/console/purchase": broker.purchase,
            "/v1/console/confirm": broker.confirm,
        }
        routes: list[BaseRoute] = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/trust", self.announce_trust, methods=["GET"]),
            Route("/v1/account/token", self.token, methods=["POST"]),
        ]
        # the same console endpoints as the licensing server's (vhw.httpapi), relayed and charged
        routes += [Route(c.path, self._endpoint(c.request, calls[c.path]), methods=["POST"]) for c in CONSOLE_ENDPOINTS]
        routes += mounts or []  # the staff's web console (vhw.webconsole.desk), from above
        self.app = AccessLog(
            Starlette(routes=routes, exception_handlers={HTTPException: _http_error}),
            access,
            headers=trust_header(self.trust),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def health(self, request: Request) -> Response:
        return JSONResponse(p.encode(p.Health("ok", "broker", __version__)))

    async def announce_trust(self, request: Request) -> Response:
        return JSONResponse(p.encode(self.trust))

    async def token(self, request: Request) -> Response:
        """A console signs in with its account's name and password once and keeps the token."""
        try:
            header = request.headers.get("authorization", "")
            if not header.lower().startswith("basic "):
                raise ApiError(401, "unauthenticated", "sign in with the account's name and password")
            name = await anyio.to_thread.run_sync(self._account, header)
            request.scope["state"]["role"] = "account"
            token = await anyio.to_thread.run_sync(self.broker.logins.issue_token, name)
            return JSONResponse(p.encode(p.AccountToken(name, token)))
        except Exception as exc:
            return error_response(exc)

    def _endpoint(self, request_cls: type, call: Callable[[str, Any], Any]) -> Handler:
        async def handle(request: Request) -> Response:
            response = await respond(request)
            if response.status_code != 200:
                await drain(request)
            return response

        async def respond(request: Request) -> Response:
            try:
                account = await anyio.to_thread.run_sync(self._account, request.headers.get("authorization", ""))
                request.scope["state"]["role"] = "account"  # (never its name: no account in a log line)
                msg: object = p.decode(request_cls, await read_body(request))
                result = await anyio.to_thread.run_sync(call, account, msg)
                return JSONResponse(p.encode(result))
            except PaymentDeclined as exc:
                return error_json(402, "payment-declined", exc.message)
            except NetworkError as exc:
                return error_json(502, "server-unreachable", f"the licensing server cannot be reached ({exc.message})")
            except ServerError as exc:
                if exc.status and 400 <= exc.status < 500:
                    return error_json(exc.status, "refused", exc.message)
                return error_json(502, "server-error", exc.message)
            except (Refusal, ApiError, p.ProtocolError, Exception) as exc:
                return error_response(exc)

        return handle

    def _account(self, header: str) -> str:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":  # the token a console keeps instead of the password
            name = self.broker.logins.account_of_token(value.strip())
            if name is None:
                raise ApiError(401, "unauthenticated", "this console's account token is not known here")
            return name
        if scheme.lower() != "basic":
            raise ApiError(401, "unauthenticated", "the broker needs your account name and password")
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(401, "unauthenticated", "malformed account credentials") from None
        if not self.broker.logins.check_account(name, password):
            raise ApiError(401, "unauthenticated", "wrong account name or password")
        return name


async def _http_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def serve(
    home: BrokerHome,
    *,
    listen: tuple[str, int] | None = None,
    ready: Callable[[str], None] | None = None,
    consoles: Callable[[Broker, str], list[Mount]] | None = None,
) -> None:
    """Serve the broker until SIGINT/SIGTERM. ``consoles``: the web consoles to mount (made with
    the service and the broker's credential token)."""
    cfg = home.config()
    token = Credential.load(home.path("credential.json")).token
    with home.broker() as broker:
        await serve_app(
            BrokerApp(broker, consoles(broker, token) if consoles else None, home.trust()),
            listen=listen or split_listen(cfg.listen),
            certfile=home.path("tls.pem"),
            keyfile=home.path("tls-key.pem"),
            ready=ready,
        )
