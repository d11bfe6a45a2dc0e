"""The repair center's web console (FIG. 13, FIG. 14), served by the licensing server.

Operators sign in with the operator credential's token. They look people up by any ID typed from a
label (its check character is checked first), see a user's devices, titles and audit entries,
repair a console or HDD, reissue a card, search the audit log and read a dashboard. Repair and
reissue show what will change, ask for confirmation, and then call the same
:class:`~vhw.server.licensing.Licensing` methods as ``vhw repair`` does through the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import crypto
from ..errors import IdError
from ..ids import Id, IdKind
from ..server.licensing import Licensing
from ..server.queries import Queries, token_hash
from ..server.store import Row
from . import charts
from .casework import CardReissue, DeviceRepair
from .downloads import Downloads
from .sessions import Session
from .web import Console, Identity, parse_time

__all__ = ["RepairConsole"]


T = TypeVar("T")

OPERATOR = ("operator",)
PAGE_SIZE = 25
REFUSAL_KINDS = (
    ("registration-refused", "registration"),
    ("user-id-invalid", "User ID"),
    ("media-refused", "media"),
    ("copy-not-permitted", "copy"),
    ("reproduction-not-permitted", "reproduction"),
)  # the five messages, labelled short


class RepairConsole(Console):
    def __init__(self, lic: Licensing, key: bytes, downloads: Path):
        self.lic = lic
        self.queries = Queries(lic.store)
        self.downloads = Downloads(downloads)
        super().__init__(
            title="vhw repair center",
            key=key,
            sign_in=self._check_token,
            still_valid=self._valid,
            home="/lookup",
            sign_in_fields=[
                {
                    "name": "token",
                    "label": "Operator token (the token in credentials/operator.json)",
                    "type": "password",
                    "autocomplete": "off",
                }
            ],
            nav=[
                ("/lookup", "Look up", OPERATOR),
                ("/audit", "Audit log", OPERATOR),
                ("/dashboard", "Dashboard", OPERATOR),
            ],
        )
        page = self.page
        repair, reissue = DeviceRepair(self), CardReissue(self)
        self.routes += [
            Route("/lookup", page(self.lookup, roles=OPERATOR), methods=["GET"]),
            Route("/user/{user_id}", page(self.user, roles=OPERATOR), methods=["GET"]),
            Route("/repair/{user_id}", page(repair.form, roles=OPERATOR), methods=["GET"]),
            Route("/repair/{user_id}", page(repair.post, roles=OPERATOR), methods=["POST"]),
            Route("/repaired/{seq}", page(repair.done, roles=OPERATOR), methods=["GET"]),
            Route("/reissue/{user_id}", page(reissue.form, roles=OPERATOR), methods=["GET"]),
            Route("/reissue/{user_id}", page(reissue.post, roles=OPERATOR), methods=["POST"]),
            Route("/reissued/{token}", page(reissue.done, roles=OPERATOR), methods=["GET"]),
            Route("/card/{token}", page(reissue.card_file, roles=OPERATOR), methods=["GET"]),
            Route("/audit", page(self.audit, roles=OPERATOR), methods=["GET"]),
            Route("/dashboard", page(self.dashboard, roles=OPERATOR), methods=["GET"]),
        ]

    # -- who may sign in ------------------------------------------------------------------------

    def _check_token(self, form: dict[str, str]) -> Identity | None:
        token = form.get("token", "").strip()
        if not token or len(token) > 200:
            return None
        digest = token_hash(token)  # looked up by hash: the database holds no token
        role, name = self.queries.credential(digest) or ("", "")
        if role != "operator":
            return None  # another role's credential (a broker's, say) opens no repair page
        return Identity("operator", name, digest.hex())

    def _valid(self, session: Session) -> bool:
        if session.role != "operator":
            return False
        role, _ = self.queries.credential(bytes.fromhex(session.check)) or ("", "")
        return role == "operator"

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    # -- look-up --------------------------------------------------------------------------------

    async def lookup(self, request: Request, session: Session) -> Response:
        text = request.query_params.get("id", "").strip()
        if not text:
            return self.render(request, "lookup.html", query="", error="", users=[], media=None, hint="", retired=None)
        try:
            ident = Id.parse(text)
        except IdError as exc:
            return self.render(
                request,
                "lookup.html",
                status=422,
                query=text,
                error=exc.message,
                users=[],
                media=None,
                hint="",
                retired=None,
            )
        found = await self.db(self.queries.find, ident)
        return self.render(
            request,
            "lookup.html",
            query=str(ident),
            error="",
            users=found.users,
            media=found.media,
            hint=found.hint,
            retired=found.retired,
        )

    # -- a user's page --------------------------------------------------------------------------

    async def user(self, request: Request, session: Session) -> Response:
        user = self._user_id(request)
        if user is None:
            return self.error(request, 404, "That is not a User ID.")
        info = await self.db(self.user_info, user)
        if info is None:
            return self.error(request, 404, f"No user {user}.")
        return self.render(request, "user.html", done="", **info)

    @staticmethod
    def _user_id(request: Request) -> Id | None:
        try:
            return Id.parse(request.path_params["user_id"], IdKind.USER)
        except IdError:
            return None

    async def target(self, request: Request) -> tuple[Id, dict[str, Any]] | None:
        """The user a page is about (from its path) and what the pages show of them."""
        user = self._user_id(request)
        if user is None:
            return None
        info = await self.db(self.user_info, user)
        return (user, info) if info else None

    def user_info(self, user: Id) -> dict[str, Any] | None:
        info = self.queries.user(user)
        if info is None:
            return None
        entry = info["entry"]
        return {
            "user": entry,
            "epoch": info["epoch"],
            "epochs": info["epochs"],
            "devices": [
                _device_line("MC-ID (memory card)", entry.mc_id, info["card"]),
                _device_line("Client ID (console)", entry.client_id, info["console"]),
                _device_line("HDD-ID", entry.hdd_id, info["hdd"]),
            ],
            "titles": info["titles"],
            "entries": info["entries"],
            "retired": info["retired"],
        }

    # -- audit ----------------------------------------------------------------------------------

    async def audit(self, request: Request, session: Session) -> Response:
        q = request.query_params
        errors = []
        ident = q.get("id", "").strip()
        if ident:
            try:
                ident = str(Id.parse(ident))
            except IdError as exc:
                errors.append(exc.message)
        since = parse_time(q["since"]) if q.get("since") else None
        until = parse_time(q["until"]) if q.get("until") else None
        if q.get("since") and since is None:
            errors.append(f"'{q['since']}' is not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC)")
        if q.get("until") and until is None:
            errors.append(f"'{q['until']}' is not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC)")
        try:
            page_no = max(1, int(q.get("page", "1")))
        except ValueError:
            page_no = 1
        action = q.get("kind", "").strip() or None

        def load() -> tuple[list[str], list[Row]]:
            kinds = self.queries.audit_kinds()
            if errors:
                return kinds, []
            offset = (page_no - 1) * PAGE_SIZE
            return kinds, self.queries.audit_page(ident or None, action, since, until, offset, PAGE_SIZE + 1)

        kinds, rows = await self.db(load)
        more = len(rows) > PAGE_SIZE
        params = {
            k: v
            for k, v in (
                ("id", ident),
                ("kind", action or ""),
                ("since", q.get("since", "")),
                ("until", q.get("until", "")),
            )
            if v
        }
        return self.render(
            request,
            "audit.html",
            status=422 if errors else 200,
            errors=errors,
            rows=rows[:PAGE_SIZE],
            kinds=kinds,
            form={"id": ident, "kind": action or "", "since": q.get("since", ""), "until": q.get("until", "")},
            page_no=page_no,
            more=more,
            params=params,
        )

    # -- dashboard ------------------------------------------------------------------------------

    async def dashboard(self, request: Request, session: Session) -> Response:
        now = int(time.time())
        start = (now // 3600 - 23) * 3600

        def load() -> tuple[dict[int, int], tuple[int, int], dict[str, int]]:
            return self.queries.keys_issued_per_hour(start), self.queries.installs(), self.queries.refusals_since(start)

        per_hour, installs, refusals = await self.db(load)
        hours = [
            (time.strftime("%H:00", time.gmtime(h * 3600)), int(per_hour.get(h, 0)))
            for h in range(start // 3600, now // 3600 + 1)
        ]
        return self.render(
            request,
            "dashboard.html",
            acquisitions=charts.bars("Keys issued per hour, last 24 hours (UTC)", hours),
            refusals=charts.bars(
                "Refusals by kind, last 24 hours (from the audit log)",
                [(label, refusals.get(k, 0)) for k, label in REFUSAL_KINDS],
                max_labels=5,
            ),
            installs=charts.bars(
                "Installs: confirmed and pending", list(zip(("confirmed", "pending"), installs, strict=True))
            ),
        )

    # -- the cases: repair (FIG. 13) and reissue (FIG. 14), in :mod:`.casework` -------------------


def _device_line(label: str, ident: str, row: Row | None) -> tuple[str, str, int | None, int | None, str | None]:
    """A device of a user as the user's page shows it: what, its ID, registered, retired, its key's
    fingerprint (a card's key is never shown)."""
    if row is None:
        return label, ident, None, None, None
    key = getattr(row, "public_key", None)
    return label, ident, row.registered, row.retired, crypto.fingerprint(bytes(key)) if key else None
