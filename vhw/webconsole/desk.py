"""The broker staff's web console (FIG. 15), served by the broker.

Staff sign in with a staff account (``vhw broker staff add``) or with the broker's own platform
credential token. They see the accounts with balances and statements, top an account up with its
card on file (the same :meth:`~vhw.broker.service.Broker.topup` as ``vhw broker account topup``), the
ledger with its balance check, and revenue per title and per day.
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from functools import partial
from urllib.parse import quote, urlencode

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import crypto
from ..broker.service import Broker
from ..errors import PaymentDeclined, StateError
from ..server.queries import token_hash
from . import charts
from .sessions import Session
from .web import HEADERS, PREFIX, Console, Identity

__all__ = ["DeskConsole"]


STAFF = ("staff", "broker")
AMOUNT_HELP = "Type an amount like 20.00 (at most 10,000.00)."
FAILURE_LIMIT, FAILURE_WINDOW = 10, 600.0  # failed sign-ins of one staff name, per 10 minutes


def parse_cents(text: str) -> int | None:

    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or value <= 0 or value > 10_000 or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)


class DeskConsole(Console):
    def __init__(self, broker: Broker, key: bytes, broker_token: str):
        self.broker = broker
        self.currency = broker.config.currency  # (every amount the desk shows is in it)
        self._token_hash = token_hash(broker_token)
        self._failures: dict[str, list[float]] = {}  # staff name -> times of failed sign-ins
        super().__init__(
            title="vhw broker desk",
            key=key,
            sign_in=self._check,
            still_valid=self._valid,
            home="/accounts",
            sign_in_fields=[
                {"name": "name", "label": "Staff account", "type": "text", "autocomplete": "username"},
                {
                    "name": "password",
                    "label": "Password (or, with no account name, the broker's credential token)",
                    "type": "password",
                    "autocomplete": "current-password",
                },
            ],
            nav=[("/accounts", "Accounts", STAFF), ("/ledger", "Ledger", STAFF), ("/revenue", "Revenue", STAFF)],
        )
        page = self.page
        self.routes += [
            Route("/accounts", page(self.accounts, roles=STAFF), methods=["GET"]),
            Route("/account/{name}", page(self.account, roles=STAFF), methods=["GET"]),
            Route("/account/{name}/topup", page(self.topup, roles=STAFF), methods=["POST"]),
            Route("/ledger", page(self.ledger, roles=STAFF), methods=["GET"]),
            Route("/revenue", page(self.revenue, roles=STAFF), methods=["GET"]),
        ]

    def _check(self, form: dict[str, str]) -> Identity | None:
        name, password = form.get("name", "").strip(), form.get("password", "")
        if not password or len(password) > 200 or len(name) > 64:
            return None
        if not name:  # the broker's own credential
            if crypto.equal(token_hash(password.strip()), self._token_hash):
                return Identity("broker", "broker", self._token_hash.hex())
            return None
        now = time.monotonic()
        recent = [t for t in self._failures.get(name, []) if now - t < FAILURE_WINDOW]
        if len(recent) >= FAILURE_LIMIT:  # (checked before scrypt: a guesser gets no answer at all)
            self._failures[name] = recent
            return None
        if self.broker.logins.check_staff(name, password):
            self._failures.pop(name, None)
            return Identity("staff", name, "staff")
        self._failures[name] = [*recent, now]
        return None

    def _valid(self, session: Session) -> bool:
        if session.role == "broker":
            return crypto.equal(bytes.fromhex(session.check), self._token_hash)
        return session.role == "staff" and self.broker.logins.staff_exists(session.name)

    async def accounts(self, request: Request, session: Session) -> Response:
        rows = await anyio.to_thread.run_sync(self.broker.ledger.accounts)
        return self.render(request, "accounts.html", accounts=rows)

    async def account(
        self, request: Request, session: Session, error: str = "", status: int = 200, amount: str = ""
    ) -> Response:
        name = request.path_params["name"]
        try:
            statement = await anyio.to_thread.run_sync(self.broker.ledger.statement, name)
        except StateError as exc:
            return self.error(request, 404, exc.message)
        if not error and "amount" in request.query_params:  # back from a mistyped top-up
            amount = request.query_params["amount"][:40]
            error, status = (AMOUNT_HELP, 422) if parse_cents(amount) is None else ("", 200)
        txn = request.query_params.get("added", "")  # the top-up just made: what it added
        added = next((e for e in statement["prepaid_entries"] if txn and e["txn"] == txn), None)
        return self.render(request, "account.html", status=status, s=statement, error=error, amount=amount, added=added)

    async def topup(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        name = request.path_params["name"]
        typed = form.get("amount", "")[:40]
        cents = parse_cents(typed)
        if cents is None:  # the page again, as a GET: what was typed stays, the error beside it
            target = f"{PREFIX}/account/{quote(name, safe='')}?{urlencode({'amount': typed})}"
            return RedirectResponse(target, status_code=303, headers=HEADERS)
        try:
            txn, _ = await anyio.to_thread.run_sync(
                partial(self.broker.ledger.topup, name, cents, by=f"staff:{session.name}")
            )
        except PaymentDeclined as exc:
            return await self.account(request, session, error=exc.message, status=402, amount=typed)
        except StateError as exc:
            return await self.account(request, session, error=exc.message, status=422, amount=typed)
        # after a POST, a GET: a reload does not pay twice, and the page says what was added
        target = f"{PREFIX}/account/{quote(name, safe='')}?added={txn}"
        return RedirectResponse(target, status_code=303, headers=HEADERS)

    async def ledger(self, request: Request, session: Session) -> Response:
        totals = await anyio.to_thread.run_sync(self.broker.ledger.totals)
        return self.render(request, "ledger.html", t=totals)

    async def revenue(self, request: Request, session: Session) -> Response:
        r = await anyio.to_thread.run_sync(self.broker.ledger.revenue)
        chart = charts.bars(
            f"Charges per day (UTC, {self.currency}), last 30 days",
            [(day, v[1]) for day, v in r["by_day"][-30:]],
            unit=charts.money,
        )
        return self.render(request, "revenue.html", r=r, chart=chart)
