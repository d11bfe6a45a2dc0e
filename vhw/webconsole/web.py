"""What both web consoles share: templates, sign-in and out, the session guard, the headers.

A :class:`Console` is a Starlette app mounted at ``/console``. Each page is declared with
:meth:`Console.page`, naming the roles that may see it; the guard gives a visitor without a valid
session the sign-in page (a POST without one, or without its CSRF token, gets 403 and changes
nothing). Store work runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import IdError
from ..ids import Id
from .sessions import COOKIE, LIFETIME, Session, Sessions

__all__ = ["session_key"]


PREFIX = "/console"
HERE = Path(__file__).parent
HEADERS = {
    # nothing but this origin: no script, style or image from anywhere else, no framing
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html", "svg", "j2"], default=True),
    undefined=jinja2.StrictUndefined,
)
_env.filters["when"] = lambda t: "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


@jinja2.pass_context
def _money(ctx: jinja2.runtime.Context, cents: int) -> str:
    """An amount, in the currency of the console that shows it (the broker desk's), if it has one."""
    currency = getattr(ctx.get("console"), "currency", "")
    return f"{cents / 100:,.2f}" + (f" {currency}" if currency else "")


_env.filters["money"] = _money


def detail_fields(detail: str | None) -> list[tuple[str, str, bool]]:
    """An audit entry's detail (a JSON object) as (field, value, is_an_id) rows to show."""
    try:
        parsed = json.loads(detail or "{}")
    except ValueError:
        return [("detail", str(detail), False)]
    if not isinstance(parsed, dict):
        return [("detail", json.dumps(parsed), False)]
    rows = []
    for key, value in parsed.items():
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append((str(key).replace("_", " "), text, isinstance(value, str) and _looks_like_id(value)))
    return rows


def _looks_like_id(text: str) -> bool:
    """A label as printed (MC-..., US-...): shown whole, never broken across lines."""
    try:
        return str(Id.parse(text)) == text
    except IdError:
        return False


_env.filters["fields"] = detail_fields

_ID_IN_TEXT = re.compile(r"\b(?:MC|US|CL|HD|MD)-[0-9A-Z]{4}(?:-[0-9A-Z]{1,4})+\b")


def ids_whole(text: object) -> markupsafe.Markup:
    """Free text (a charge's "for", say) with each ID in it kept on one line."""
    escaped = str(markupsafe.escape(str(text)))
    return markupsafe.Markup(_ID_IN_TEXT.sub(lambda m: f'<span class="id">{m.group(0)}</span>', escaped))


_env.filters["ids_whole"] = ids_whole


def session_key(path: Path) -> bytes:
    """The console's session key: made once (race-free, mode 0600), then read by every process."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it this very moment
            key = path.read_bytes()
            if len(key) == 32:
                return key
            time.sleep(0.01)
        raise ValueError(f"{path} is not a session key (32 bytes): remove it and start again") from None
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(key)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)  # the O_EXCL file is replaced by the full key in one step
    finally:
        os.close(fd)
    return key


@dataclass(frozen=True)
class Identity:
    role: str
    name: str
    check: str  # what ties a session to the credential: it must still hold for each request


class Console:
    """The ``/console`` app of one service.

    ``sign_in(form) -> Identity | None`` checks what was typed on the sign-in page;
    ``still_valid(session) -> bool`` is asked on every request (a revoked credential ends its
    sessions). Both run in a worker thread.
    """

    def __init__(
        self,
        *,
        title: str,
        key: bytes,
        sign_in: Callable[[dict[str, str]], Identity | None],
        still_valid: Callable[[Session], bool],
        home: str,
        sign_in_fields: list[dict[str, str]],
        nav: list[tuple[str, str, tuple[str, ...]]],
    ):
        self.title, self.home = title, home
        self.sessions = Sessions(key)
        self._sign_in, self._still_valid = sign_in, still_valid
        self.sign_in_fields, self.nav = sign_in_fields, nav
        self.routes: list[Route] = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.page(self.logout, roles=None), methods=["POST"]),
            Route("/static/console.css", self.stylesheet, methods=["GET"]),
            Route("/static/favicon.svg", self.favicon, methods=["GET"]),
            Route("/", self.page(self.index, roles=None), methods=["GET"]),
        ]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes, exception_handlers={404: self.not_found, 405: self.not_found})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """A page for an address the console does not have: what happened, and the way back."""
        return self.render(request, "not_found.html", status=404, path=request.url.path)

    # -- rendering ------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = request.scope.get("console_session")
        html = _env.get_template(template).render(
            console=self,
            session=session,
            prefix=PREFIX,
            request_path=request.url.path,
            csrf=self.sessions.csrf_token(session) if session else "",
            nav=[(href, label) for href, label, roles in self.nav if session and session.role in roles],
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, message=message, status_code=status)

    async def stylesheet(self, request: Request) -> Response:
        return _static("console.css", "text/css")

    async def favicon(self, request: Request) -> Response:
        return _static("favicon.svg", "image/svg+xml")

    # -- the guard ------------------------------------------------------------------------------

    def page(
        self, handler: Callable[..., Awaitable[Response]], *, roles: tuple[str, ...] | None
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap ``handler(request, session[, form])``: a valid session of one of ``roles`` (any
        role if None), and for a POST a form with the session's CSRF token."""

        async def guarded(request: Request) -> Response:
            session = self.sessions.open(request.cookies.get(COOKIE), int(time.time()))
            if session is not None and not await anyio.to_thread.run_sync(self._still_valid, session):
                session = None
            if session is None:
                if request.method == "GET":
                    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
                    return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303, headers=HEADERS)
                return self.error(request, 403, "Sign in first: this action needs a session.")
            request.scope["console_session"] = session
            state = request.scope.get("state")
            if isinstance(state, dict):  # the access log line names the signed-in role
                state["role"] = f"console-{session.role}"
            if roles is not None and session.role not in roles:
                return self.error(request, 403, f"A {session.role} session cannot open this page.")
            if request.method == "POST":
                form = await _form(request)
                if not self.sessions.csrf_ok(session, form.get("csrf")):
                    return self.error(
                        request,
                        403,
                        "This form has expired or did not come from this console:"
                        " nothing was changed. Open the page again.",
                    )
                return await handler(request, session, form)
            return await handler(request, session)

        return guarded

    # -- sign-in and out ------------------------------------------------------------------------

    async def login_page(
        self, request: Request, message: str = "", status: int = 200, typed: dict[str, str] | None = None
    ) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = self.render(
            request,
            "login.html",
            status=status,
            message=message,
            fields=self.sign_in_fields,
            typed=typed or {},  # what was typed stays (never a password or token)
            token=self._login_token(nonce),
            next=_local(request.query_params.get("next", "")),
        )
        response.set_cookie(
            "vhw_login", nonce, max_age=900, path=PREFIX + "/login", secure=True, httponly=True, samesite="strict"
        )
        return response

    def _login_token(self, nonce: str) -> str:
        return self.sessions.csrf_token(Session("", "", "login:" + nonce, "", 0))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        nonce = request.cookies.get("vhw_login", "")
        if not nonce or not self.sessions.csrf_ok(Session("", "", "login:" + nonce, "", 0), form.get("csrf")):
            return await self.login_page(request, "The sign-in form had expired; please sign in again.", 403)
        who = await anyio.to_thread.run_sync(self._sign_in, form)
        if who is None:
            return await self.login_page(request, "Wrong credential, account or password.", 401, typed=form)
        cookie, _ = self.sessions.issue(who.role, who.name, who.check, int(time.time()))
        response = RedirectResponse(
            _local(form.get("next", "")) or PREFIX + self.home, status_code=303, headers=HEADERS
        )
        response.set_cookie(
            COOKIE, cookie, max_age=LIFETIME, path=PREFIX, secure=True, httponly=True, samesite="strict"
        )
        response.delete_cookie("vhw_login", path=PREFIX + "/login", secure=True, httponly=True, samesite="strict")
        return response

    async def logout(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        response = RedirectResponse(PREFIX + "/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
        return response

    async def index(self, request: Request, session: Session) -> Response:
        return RedirectResponse(PREFIX + self.home, status_code=303, headers=HEADERS)


def _static(name: str, media_type: str) -> Response:
    return Response(
        (HERE / "static" / name).read_bytes(),
        media_type=media_type,
        headers={"cache-control": "max-age=3600", "x-content-type-options": "nosniff"},
    )


async def _form(request: Request) -> dict[str, Any]:
    """The posted form's fields as text (a form that cannot be read is an empty one)."""
    try:
        form = await request.form(max_files=0, max_fields=50)
    except (HTTPException, MultiPartException, ValueError, UnicodeDecodeError):
        return {}  # a malformed body: the guard then finds no CSRF token
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _local(target: str) -> str:
    """A redirect target inside this console, or nothing (never another site)."""
    return target if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target else ""


def parse_time(text: str) -> int | None:
    """A time typed in a form (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM``, UTC) as seconds, or None."""

    text = text.strip()
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(text, fmt))
        except ValueError:
            continue
    return None
