"""The repair center's web console (FIG. 13, FIG. 14), served by the licensing server.

Operators sign in with the operator credential's token. They look people up by any ID typed from a
label (its check character is checked first), see a user's devices, titles and audit entries,
repair a console or HDD, reissue a card, search the audit log and read a dashboard. Repair and
reissue show what will change, ask for confirmation, and then call the same
:class:`~vhw.server.licensing.Licensing` methods as ``vhw repair`` does through the API.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import crypto
from .. import protocol as p
from ..console import decisions
from ..devices import card as card_dev
from ..errors import IdError, ServerError, VhwError
from ..formats.card import Card
from ..ids import Id, IdKind
from ..server.licensing import Licensing
from ..server.queries import Queries, token_hash
from ..server.store import Row
from . import charts
from .downloads import Downloads
from .sessions import Session
from .web import HEADERS, PREFIX, Console, Identity, parse_time

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
        self.routes += [
            Route("/lookup", page(self.lookup, roles=OPERATOR), methods=["GET"]),
            Route("/user/{user_id}", page(self.user, roles=OPERATOR), methods=["GET"]),
            Route("/repair/{user_id}", page(self.repair_form, roles=OPERATOR), methods=["GET"]),
            Route("/repair/{user_id}", page(self.repair_post, roles=OPERATOR), methods=["POST"]),
            Route("/reissue/{user_id}", page(self.reissue_form, roles=OPERATOR), methods=["GET"]),
            Route("/reissue/{user_id}", page(self.reissue_post, roles=OPERATOR), methods=["POST"]),
            Route("/repaired/{seq}", page(self.repaired, roles=OPERATOR), methods=["GET"]),
            Route("/reissued/{token}", page(self.reissued, roles=OPERATOR), methods=["GET"]),
            Route("/card/{token}", page(self.card_file, roles=OPERATOR), methods=["GET"]),
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
        info = await self.db(self._user_info, user)
        if info is None:
            return self.error(request, 404, f"No user {user}.")
        return self.render(request, "user.html", done="", **info)

    @staticmethod
    def _user_id(request: Request) -> Id | None:
        try:
            return Id.parse(request.path_params["user_id"], IdKind.USER)
        except IdError:
            return None

    def _user_info(self, user: Id) -> dict[str, Any] | None:
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

    # -- repair, FIG. 13 ------------------------------------------------------------------------

    async def _target(self, request: Request) -> tuple[Id, dict[str, Any]] | None:
        """The user the page is about (from its path) and what the pages show of them."""
        user = self._user_id(request)
        if user is None:
            return None
        info = await self.db(self._user_info, user)
        return (user, info) if info else None

    async def repair_form(self, request: Request, session: Session) -> Response:
        """The repair form; with new IDs typed (a GET: it changes nothing), what will change."""
        found = await self._target(request)
        if found is None:
            return self.error(request, 404, "No such user.")
        _, info = found
        form = {k: v[:100] for k, v in request.query_params.items() if k in ("new_client_id", "new_hdd_id")}
        if not form:
            return self._repair_page(request, info, {}, "")
        checked = self._new_ids(request, info, form)
        if isinstance(checked, Response):
            return checked
        return self._repair_page(request, info, form, "", self._preview(info, checked))

    def _repair_page(
        self,
        request: Request,
        info: dict[str, Any],
        form: dict[str, str],
        error: str,
        preview: dict[str, Any] | None = None,
        status: int = 200,
        error_field: str = "",
    ) -> Response:
        return self.render(
            request,
            "repair.html",
            status=status,
            info=info,
            form=form,
            error=error,
            error_field=error_field,
            preview=preview,
        )

    def _new_ids(self, request: Request, info: dict[str, Any], form: dict[str, str]) -> dict[str, Id] | Response:
        """The new IDs typed, checked; or the form again, what was typed kept, the error beside it."""
        new = {}
        for field, kind in (("new_client_id", IdKind.CLIENT), ("new_hdd_id", IdKind.HDD)):
            text = form.get(field, "").strip()
            if text:
                try:
                    new[field] = Id.parse(text, kind)
                except IdError as exc:
                    return self._repair_page(request, info, form, exc.message, status=422, error_field=field)
        if not new:
            error = "Type the new Client ID or the new HDD-ID (or both)."
            return self._repair_page(request, info, form, error, status=422, error_field="new_client_id")
        return new

    @staticmethod
    def _preview(info: dict[str, Any], new: dict[str, Id]) -> dict[str, Any]:
        changes = [
            (label, old, str(new[field]))
            for field, label, old in (
                ("new_client_id", "Client ID", info["user"][2]),
                ("new_hdd_id", "HDD-ID", info["user"][3]),
            )
            if field in new
        ]
        return {"changes": changes, "cleared": len(info["titles"]), "new": {k: str(v) for k, v in new.items()}}

    async def repair_post(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """The confirmed repair; then, a GET of what it changed (Back and reload never repair again)."""
        found = await self._target(request)
        if found is None:
            return self.error(request, 404, "No such user.")
        user, info = found
        checked = self._new_ids(request, info, form)
        if isinstance(checked, Response):
            return checked
        mc_id = Id.parse(info["user"][1], IdKind.CARD)
        req = p.RepairRequest(mc_id, checked.get("new_client_id"), checked.get("new_hdd_id"))
        try:
            await self.db(self.lic.repair, f"operator:{session.name}", req)
        except (ServerError, VhwError) as exc:  # refused: nothing changed, so the page as it was
            return self._repair_page(request, info, form, exc.message, status=422)
        seq = await self.db(self.queries.last_repair, user)
        return RedirectResponse(f"{PREFIX}/repaired/{seq}", status_code=303, headers=HEADERS)

    async def repaired(self, request: Request, session: Session) -> Response:
        """What a repair changed, from its audit entries (so any worker, at any time, shows it)."""
        try:
            seq = int(request.path_params["seq"])
        except ValueError:
            seq = -1
        found = await self.db(self.queries.repair_result, seq)
        if found is None:
            return self.error(request, 404, "No repair was recorded under that number.")
        after = await self.db(self._user_info, Id.parse(found.user_id, IdKind.USER))
        return self.render(
            request, "repaired.html", seq=seq, at=found.at, changed=found.retired, kept=found.kept, after=after
        )

    # -- reissue, FIG. 14 -----------------------------------------------------------------------

    async def reissue_form(self, request: Request, session: Session) -> Response:
        found = await self._target(request)
        if found is None:
            return self.error(request, 404, "No such user.")
        user, info = found
        typed = request.query_params.get("user_id")
        if typed is None:
            return self.render(request, "reissue.html", info=info, error="", typed="")
        error = self._typed_user_error(user, typed)  # back from a mistyped confirmation
        return self.render(request, "reissue.html", status=422 if error else 200, info=info, error=error, typed=typed)

    @staticmethod
    def _typed_user_error(user: Id, typed: str) -> str:
        """What is wrong with the User ID typed to confirm a reissue ("" if it is this user's)."""
        try:
            if Id.parse(typed, IdKind.USER) != user:
                return "the User ID typed is not this user's"
        except IdError as exc:  # the operator types the User ID from the user's memo, as the CLI asks
            return exc.message
        return ""

    async def reissue_post(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        found = await self._target(request)
        if found is None:
            return self.error(request, 404, "No such user.")
        user, info = found
        typed = form.get("user_id", "").strip()[:100]
        if self._typed_user_error(user, typed):  # the form again, as a GET: what was typed, the error
            target = f"{PREFIX}/reissue/{user}?{urlencode({'user_id': typed})}"
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        mc_id, mc_key = Id.random(IdKind.CARD), crypto.random_key()
        try:
            resp = await self.db(self.lic.reissue, f"operator:{session.name}", p.ReissueRequest(user, mc_id, mc_key))
            data = await self.db(_card_bytes, decisions.reissued_card(user, mc_id, mc_key, resp, int(time.time())))
        except (ServerError, VhwError) as exc:
            return self.render(request, "reissue.html", status=422, info=info, error=exc.message, typed=typed)
        made = {
            "user_id": str(user),
            "mc_id": str(mc_id),
            "old_mc_id": info["devices"][0][1],
            "epoch": info["epoch"] + 1,
            "licenses": len(resp.licenses),
        }
        token = await self.db(self.downloads.put, session.sid, f"{mc_id}.card", data, made)
        # after a POST, a GET: Back and reload show the new card's page, they never reissue again
        return RedirectResponse(f"{PREFIX}/reissued/{token}", status_code=303, headers=HEADERS)

    async def reissued(self, request: Request, session: Session) -> Response:
        token = request.path_params["token"]
        found = await self.db(self.downloads.peek, token, session.sid)
        if found is None:
            return self.error(request, 404, "This page was for another session, or its 15 minutes are over.")
        made, available = found
        after = await self.db(self._user_info, Id.parse(str(made["user_id"]), IdKind.USER))
        return self.render(request, "reissued.html", made=made, available=available, token=token, after=after)

    async def card_file(self, request: Request, session: Session) -> Response:
        """The new card's file, once, to the session that made it (it holds the new MC-Key)."""
        found = await self.db(self.downloads.take, request.path_params["token"], session.sid)
        if found is None:
            return self.error(request, 404, "This card file was fetched already, or has expired.")
        name, data = found
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "content-disposition": f'attachment; filename="{name}"',
                "cache-control": "no-store",
                "x-content-type-options": "nosniff",
            },
        )


def _card_bytes(card: Card) -> bytes:
    with tempfile.TemporaryDirectory(prefix="vhw-card-") as tmp:
        path = Path(tmp) / "new.card"
        card_dev.create(path, card)
        return path.read_bytes()


def _device_line(label: str, ident: str, row: Row | None) -> tuple[str, str, int | None, int | None, str | None]:
    """A device of a user as the user's page shows it: what, its ID, registered, retired, its key's
    fingerprint (a card's key is never shown)."""
    if row is None:
        return label, ident, None, None, None
    key = getattr(row, "public_key", None)
    return label, ident, row.registered, row.retired, crypto.fingerprint(bytes(key)) if key else None
