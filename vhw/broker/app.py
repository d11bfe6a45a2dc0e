"""The broker's HTTPS app: the consoles' ``/v1/console/...`` endpoints (checked against an account,
relayed, charged) and the staff's web console at ``/console/``; ``serve`` runs it."""

from __future__ import annotations

from .. import protocol as p
from ..errors import NetworkError, PaymentDeclined, Refusal, ServerError
from ..server.home import Credential
from .home import BrokerHome
from .service import Broker


class BrokerApp:
    """The consoles' side of the broker: the server's console endpoints, plus an account."""

    def __init__(self, broker: Broker, console_key: bytes | None = None, token: str = ""):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Mount, Route

        from ..server.app import _error_response

        self.broker = broker
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/console/register", self._endpoint(p.RegisterRequest, broker.register), methods=["POST"]),
            Route("/v1/console/acquire", self._endpoint(p.AcquireRequest, broker.acquire), methods=["POST"]),
            Route("/v1/console/purchase", self._endpoint(p.PurchaseRequest, broker.purchase), methods=["POST"]),
            Route("/v1/console/confirm", self._endpoint(p.ConfirmRequest, broker.confirm), methods=["POST"]),
        ]
        if console_key is not None:  # the staff's web console (vhw.webconsole.desk)
            from ..webconsole.desk import DeskConsole

            routes.append(Mount("/console", app=DeskConsole(broker, console_key, token).app()))
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: lambda req, exc: _error_response(exc)})

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    async def health(self, request):
        from starlette.responses import JSONResponse

        from .. import __version__

        return JSONResponse(p.encode(p.Health("ok", "broker", __version__)))

    def _endpoint(self, request_cls, call):
        import anyio
        from starlette.responses import JSONResponse

        from ..server.app import ApiError, _error_response, _json, _read_body, drain

        async def handle(request):
            response = await respond(request)
            if response.status_code != 200:
                await drain(request)
            return response

        async def respond(request):
            try:
                account = await anyio.to_thread.run_sync(self._account, request.headers.get("authorization", ""))
                msg = p.decode(request_cls, await _read_body(request))
                result = await anyio.to_thread.run_sync(call, account, msg)
                return JSONResponse(p.encode(result))
            except PaymentDeclined as exc:
                return _json(402, "payment-declined", exc.message)
            except NetworkError as exc:
                return _json(502, "server-unreachable", f"the licensing server cannot be reached ({exc.message})")
            except ServerError as exc:
                if exc.status and 400 <= exc.status < 500:
                    return _json(exc.status, "refused", exc.message)
                return _json(502, "server-error", exc.message)
            except (Refusal, ApiError, p.ProtocolError, Exception) as exc:
                return _error_response(exc)

        return handle

    def _account(self, header: str) -> str:
        import base64
        import binascii

        from ..server.app import ApiError

        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(401, "unauthenticated", "the broker needs your account name and password")
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(401, "unauthenticated", "malformed account credentials") from None
        if not self.broker.check_password(name, password):
            raise ApiError(401, "unauthenticated", "wrong account name or password")
        return name


async def serve(home: BrokerHome, *, listen: tuple[str, int] | None = None, ready=None) -> None:
    from ..server.app import _split, serve_app
    from ..webconsole.web import session_key

    cfg = home.config()
    key = session_key(home.path("console-session.key"))
    token = Credential.load(home.path("credential.json")).token
    with home.broker() as broker:
        await serve_app(
            BrokerApp(broker, key, token),
            listen=listen or _split(cfg.listen),
            certfile=home.path("tls.pem"),
            keyfile=home.path("tls-key.pem"),
            ready=ready,
        )
