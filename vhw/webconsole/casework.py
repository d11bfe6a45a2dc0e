"""The repair center's two cases, each a form, a confirmation and a page of what changed: a
repaired or exchanged console or HDD (FIG. 13) and a new card for a damaged or lost one
(FIG. 14). Both call the same :class:`~vhw.server.licensing.Licensing` methods as ``vhw repair``;
after each POST comes a GET of what it did, so Back and reload never repair or reissue again.
The pages are served by the repair console (:mod:`.repair`), their :class:`Host`."""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import crypto
from .. import protocol as p
from ..console import decisions
from ..devices import card as card_dev
from ..errors import IdError, ServerError, VhwError
from ..formats.card import Card
from ..ids import Id, IdKind
from ..server.licensing import Licensing
from ..server.queries import Queries
from .downloads import Downloads
from .sessions import Session
from .web import HEADERS, PREFIX

__all__ = ["CardReissue", "DeviceRepair", "Host"]

T = TypeVar("T")


class Host(Protocol):
    """What the pages ask of the console that serves them."""

    lic: Licensing
    queries: Queries
    downloads: Downloads

    def render(self, request: Request, template: str, *, status: int = 200, **context: Any) -> Response: ...

    def error(self, request: Request, status: int, message: str) -> Response: ...

    async def db(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def target(self, request: Request) -> tuple[Id, dict[str, Any]] | None: ...

    def user_info(self, user: Id) -> dict[str, Any] | None: ...


Page = Callable[..., Awaitable[Response]]


def _about_user(method: Page) -> Page:
    """A page about the user its path names: ``method(self, request, session, user, info[, form])``,
    or the page that says there is no such user."""

    @functools.wraps(method)
    async def page(self: _Case, request: Request, session: Session, *form: dict[str, str]) -> Response:
        found = await self.host.target(request)
        if found is None:
            return self.host.error(request, 404, "No such user.")
        return await method(self, request, session, *found, *form)

    return page


class _Case:
    """One case's pages, served by ``host``."""

    def __init__(self, host: Host):
        self.host = host


class DeviceRepair(_Case):
    """FIG. 13: re-register a repaired or exchanged device with its new ID."""

    @_about_user
    async def form(self, request: Request, session: Session, user: Id, info: dict[str, Any]) -> Response:
        """The repair form; with new IDs typed (a GET: it changes nothing), what will change."""
        form = {k: v[:100] for k, v in request.query_params.items() if k in ("new_client_id", "new_hdd_id")}
        if not form:
            return self._page(request, info, {}, "")
        checked = self._new_ids(request, info, form)
        if isinstance(checked, Response):
            return checked
        return self._page(request, info, form, "", self._preview(info, checked))

    def _page(
        self,
        request: Request,
        info: dict[str, Any],
        form: dict[str, str],
        error: str,
        preview: dict[str, Any] | None = None,
        status: int = 200,
        error_field: str = "",
    ) -> Response:
        return self.host.render(
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
                    return self._page(request, info, form, exc.message, status=422, error_field=field)
        if not new:
            error = "Type the new Client ID or the new HDD-ID (or both)."
            return self._page(request, info, form, error, status=422, error_field="new_client_id")
        return new

    @staticmethod
    def _preview(info: dict[str, Any], new: dict[str, Id]) -> dict[str, Any]:
        changes = [
            (label, old, str(new[field]))
            for field, label, old in (
                ("new_client_id", "Client ID", info["user"].client_id),
                ("new_hdd_id", "HDD-ID", info["user"].hdd_id),
            )
            if field in new
        ]
        return {"changes": changes, "cleared": len(info["titles"]), "new": {k: str(v) for k, v in new.items()}}

    @_about_user
    async def post(
        self, request: Request, session: Session, user: Id, info: dict[str, Any], form: dict[str, str]
    ) -> Response:
        """The confirmed repair; then, a GET of what it changed (Back and reload never repair again)."""
        checked = self._new_ids(request, info, form)
        if isinstance(checked, Response):
            return checked
        mc_id = Id.parse(info["user"].mc_id, IdKind.CARD)
        req = p.RepairRequest(mc_id, checked.get("new_client_id"), checked.get("new_hdd_id"))
        try:
            await self.host.db(self.host.lic.repair, f"operator:{session.name}", req)
        except (ServerError, VhwError) as exc:  # refused: nothing changed, so the page as it was
            return self._page(request, info, form, exc.message, status=422)
        seq = await self.host.db(self.host.queries.last_repair, user)
        return RedirectResponse(f"{PREFIX}/repaired/{seq}", status_code=303, headers=HEADERS)

    async def done(self, request: Request, session: Session) -> Response:
        """What a repair changed, from its audit entries (so any worker, at any time, shows it)."""
        try:
            seq = int(request.path_params["seq"])
        except ValueError:
            seq = -1
        found = await self.host.db(self.host.queries.repair_result, seq)
        if found is None:
            return self.host.error(request, 404, "No repair was recorded under that number.")
        after = await self.host.db(self.host.user_info, Id.parse(found.user_id, IdKind.USER))
        return self.host.render(
            request, "repaired.html", seq=seq, at=found.at, changed=found.retired, kept=found.kept, after=after
        )


class CardReissue(_Case):
    """FIG. 14: a new card for a damaged or lost one, its file fetched once by the session that made it."""

    @_about_user
    async def form(self, request: Request, session: Session, user: Id, info: dict[str, Any]) -> Response:
        """The reissue form; back from a mistyped confirmation, what was typed and what is wrong."""
        typed = request.query_params.get("user_id")
        if typed is None:
            return self.host.render(request, "reissue.html", info=info, error="", typed="")
        error = self._typed_user_error(user, typed)  # back from a mistyped confirmation
        return self.host.render(
            request, "reissue.html", status=422 if error else 200, info=info, error=error, typed=typed
        )

    @staticmethod
    def _typed_user_error(user: Id, typed: str) -> str:
        """What is wrong with the User ID typed to confirm a reissue ("" if it is this user's)."""
        try:
            if Id.parse(typed, IdKind.USER) != user:
                return "the User ID typed is not this user's"
        except IdError as exc:  # the operator types the User ID from the user's memo, as the CLI asks
            return exc.message
        return ""

    @_about_user
    async def post(
        self, request: Request, session: Session, user: Id, info: dict[str, Any], form: dict[str, str]
    ) -> Response:
        """The confirmed reissue; then, a GET of the new card's page (Back and reload never reissue again)."""
        typed = form.get("user_id", "").strip()[:100]
        if self._typed_user_error(user, typed):  # the form again, as a GET: what was typed, the error
            target = f"{PREFIX}/reissue/{user}?{urlencode({'user_id': typed})}"
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        mc_id, mc_key = Id.random(IdKind.CARD), crypto.random_key()
        try:
            resp = await self.host.db(
                self.host.lic.reissue, f"operator:{session.name}", p.ReissueRequest(user, mc_id, mc_key)
            )
            data = await self.host.db(_card_bytes, decisions.reissued_card(user, mc_id, mc_key, resp, int(time.time())))
        except (ServerError, VhwError) as exc:
            return self.host.render(request, "reissue.html", status=422, info=info, error=exc.message, typed=typed)
        made = {
            "user_id": str(user),
            "mc_id": str(mc_id),
            "old_mc_id": info["user"].mc_id,
            "epoch": info["epoch"] + 1,
            "licenses": len(resp.licenses),
        }
        token = await self.host.db(self.host.downloads.put, session.sid, f"{mc_id}.card", data, made)
        # after a POST, a GET: Back and reload show the new card's page, they never reissue again
        return RedirectResponse(f"{PREFIX}/reissued/{token}", status_code=303, headers=HEADERS)

    async def done(self, request: Request, session: Session) -> Response:
        token = request.path_params["token"]
        found = await self.host.db(self.host.downloads.peek, token, session.sid)
        if found is None:
            return self.host.error(request, 404, "This page was for another session, or its 15 minutes are over.")
        made, available = found
        after = await self.host.db(self.host.user_info, Id.parse(str(made["user_id"]), IdKind.USER))
        return self.host.render(request, "reissued.html", made=made, available=available, token=token, after=after)

    async def card_file(self, request: Request, session: Session) -> Response:
        """The new card's file, once, to the session that made it (it holds the new MC-Key)."""
        found = await self.host.db(self.host.downloads.take, request.path_params["token"], session.sid)
        if found is None:
            return self.host.error(request, 404, "This card file was fetched already, or has expired.")
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
