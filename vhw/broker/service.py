"""The broker (the patent's third party management server device 50, FIG. 15).

Users reach the licensing server only through the broker. A console points at the broker instead
of the server (the same ``/v1/console/...`` requests) and adds its account's name and password
(HTTP Basic). The broker checks the account, passes the console's MC-ID and wrapped items through
to the server over mutual TLS with its own credential (it never sees an unwrapped key), and
charges a set price per key, split between platform and broker in set percentages.

A charge is made in two steps around the server's answer, so that nothing is paid for that was
not issued and nothing is issued that could not be paid for:

    hold      prepaid balance reserved, or the card on file authorised; a decline stops here,
              before the server is asked (no key, no MID flagged)
    relay     the server flags the MID and issues the keys, or refuses
    capture   only when the server says the MID was flagged just now (a refetch after a lost
              answer is free), else the hold is released

Every capture writes a balanced double-entry transaction to the ledger (amounts in cents, debits
positive, each transaction summing to zero):

    prepaid:  user:NAME +price, revenue:platform -share, revenue:broker -rest
    card:     processor:receivable +price, revenue:platform -share, revenue:broker -rest
    top-up:   processor:receivable +amount, user:NAME -amount

so a user's prepaid balance is minus the sum of ``user:NAME``, and the platform's and broker's
revenue are minus the sums of their accounts. Every charge, top-up and relayed key is also in
the broker's audit log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .. import crypto
from .. import protocol as p
from ..errors import FileError, PaymentDeclined, Refusal, StateError
from ..server.store import Row, Store, Tx
from .payments import Processor

M = TypeVar("M")

log = logging.getLogger(__name__)

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE accounts (name TEXT PRIMARY KEY, password_hash BYTEA NOT NULL, salt BYTEA NOT NULL,"
        " card_token TEXT, card_last4 TEXT, created BIGINT NOT NULL)",
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, txn TEXT NOT NULL, account TEXT NOT NULL,"
        " cents BIGINT NOT NULL, memo TEXT NOT NULL, at BIGINT NOT NULL)",
        "CREATE INDEX ledger_account ON ledger (account)",
        "CREATE TABLE holds (hold TEXT PRIMARY KEY, account TEXT NOT NULL, cents BIGINT NOT NULL,"
        " method TEXT NOT NULL, auth TEXT, state TEXT NOT NULL, at BIGINT NOT NULL)",
        "CREATE TABLE charges (txn TEXT PRIMARY KEY, account TEXT NOT NULL, cents BIGINT NOT NULL,"
        " platform BIGINT NOT NULL, broker BIGINT NOT NULL, what TEXT NOT NULL, method TEXT NOT NULL,"
        " at BIGINT NOT NULL)",
        "CREATE TABLE processor_cards (token TEXT PRIMARY KEY, declines BIGINT NOT NULL)",
        "CREATE TABLE processor_auths (auth TEXT PRIMARY KEY, token TEXT NOT NULL, cents BIGINT NOT NULL,"
        " state TEXT NOT NULL)",
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL, actor TEXT NOT NULL,"
        " action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL)",
    ],
    [  # 2: the broker's staff, who sign in to its web console (passwords as scrypt hashes)
        "CREATE TABLE staff (name TEXT PRIMARY KEY, password_hash BYTEA NOT NULL, salt BYTEA NOT NULL,"
        " created BIGINT NOT NULL)",
    ],
    [  # 3: each password hash's scrypt cost (log2 N): staff hashes made from now on cost 2^17
        "ALTER TABLE staff ADD COLUMN scrypt_log_n BIGINT NOT NULL DEFAULT 14",
        "ALTER TABLE accounts ADD COLUMN scrypt_log_n BIGINT NOT NULL DEFAULT 14",
    ],
    [  # 4: the tokens consoles keep instead of their account's password (their SHA-256 only)
        "CREATE TABLE account_tokens (token_hash BYTEA PRIMARY KEY, account TEXT NOT NULL, created BIGINT NOT NULL)",
    ],
]

#: scrypt cost (log2 N) per kind of login. Staff sign in now and then to a web console that can
#: move money: 2^17 (128 MiB, ~0.6 s here per guess). A console's account is checked on every
#: relayed request, so it costs 2^14 (16 MiB, ~0.08 s): guessing stays expensive, serving does not.
LOG_N = {"staff": 17, "accounts": 14}


@dataclass
class BrokerConfig:
    server: str
    listen: str = "127.0.0.1:9443"
    price_cents: int = 499
    platform_share: int = 70  # percent of each charge that goes to the platform
    currency: str = "EUR"  # ISO 4217: what every amount is in (prices, balances, the ledger)

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        try:
            cfg = cls(**json.loads(path.read_text()))
            if not 0 <= cfg.platform_share <= 100 or cfg.price_cents < 0:
                raise ValueError("share or price out of range")
            if not valid_currency(cfg.currency):
                raise ValueError(f"currency {cfg.currency!r} is not a three-letter ISO 4217 code")
        except OSError as exc:
            raise FileError(path, f"cannot read broker configuration: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise FileError(path, f"invalid broker configuration: {exc}") from None
        return cfg


def valid_currency(code: object) -> bool:
    return isinstance(code, str) and len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()


def money(cents: int, currency: str) -> str:
    """An amount as people read it: 1,234.50 EUR."""
    return f"{cents / 100:,.2f} {currency}"


class Relay(Protocol):
    """Sends a message to the licensing server and decodes its answer (``Client.call``)."""

    def __call__(self, path: str, msg: Any, answer: type[M], /) -> M: ...


@dataclass(frozen=True)
class Hold:
    hold: str
    account: str
    cents: int
    method: str  # "prepaid" or "card"
    auth: str | None = None


class Broker:
    """Accounts, charges and the relay; the web app (:class:`BrokerApp`) only decodes and maps."""

    def __init__(
        self,
        store: Store,
        processor: Processor,
        config: BrokerConfig,
        relay: Relay,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.processor = processor
        self.config = config
        self.relay = relay
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock())

    def _audit(self, tx: Tx, actor: str, action: str, subject: str, **detail: object) -> None:
        tx.audit(self._now(), actor, [(action, subject, detail)])

    # -- accounts -----------------------------------------------------------------------------

    def add_account(self, name: str, password: str) -> None:
        self._add_login("accounts", "account", name, password)

    def add_staff(self, name: str, password: str) -> None:
        """A member of the broker's staff, who signs in to the web console."""
        self._add_login("staff", "staff account", name, password)

    def _add_login(self, table: str, what: str, name: str, password: str) -> None:
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise StateError(f"{name!r} is not an account name (letters, digits, - _ .)")
        if len(password) < 8:
            raise StateError("a password has at least 8 characters")
        salt = secrets.token_bytes(16)
        log_n = LOG_N[table]
        with self.store.transaction() as tx:
            if tx.one(f"SELECT 1 FROM {table} WHERE name = ?", name):
                raise StateError(f"{what} {name} exists already")
            tx.execute(
                f"INSERT INTO {table} (name, password_hash, salt, created, scrypt_log_n) VALUES (?, ?, ?, ?, ?)",
                name,
                crypto.password_hash(password, salt, log_n=log_n),
                salt,
                self._now(),
                log_n,
            )
            self._audit(tx, "broker", f"add-{table.rstrip('s')}", name)

    def check_password(self, name: str, password: str) -> bool:
        return self._check_login("accounts", name, password)

    def issue_token(self, name: str) -> str:
        """A token for a console signed in as account ``name`` (its password checked by the
        caller): the console keeps it instead of the password. The broker keeps its SHA-256."""
        token = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO account_tokens (token_hash, account, created) VALUES (?, ?, ?)",
                hashlib.sha256(token.encode()).digest(),
                name,
                self._now(),
            )
            self._audit(tx, f"user:{name}", "issue-console-token", name)
        return token

    def account_of_token(self, token: str) -> str | None:
        """The account a console's token was issued to (None: no such token). The lookup is by
        the token's SHA-256, so no comparison of the secret itself takes place."""
        with self.store.transaction() as tx:
            row = tx.one(
                "SELECT account FROM account_tokens WHERE token_hash = ?", hashlib.sha256(token.encode()).digest()
            )
        return str(row[0]) if row else None

    def check_staff(self, name: str, password: str) -> bool:
        return self._check_login("staff", name, password)

    def remove_staff(self, name: str) -> None:
        with self.store.transaction() as tx:
            if not tx.execute("DELETE FROM staff WHERE name = ?", name):
                raise StateError(f"no staff account {name}")
            self._audit(tx, "broker", "remove-staff", name)

    def staff(self) -> list[dict[str, Any]]:
        """Every staff account: its name and when it was added (never its password's hash)."""
        with self.store.transaction() as tx:
            return [{"name": n, "created": int(c)} for n, c in tx.all("SELECT name, created FROM staff ORDER BY name")]

    def money(self, cents: int) -> str:
        """An amount in this broker's currency, as people read it."""
        return money(cents, self.config.currency)

    def staff_exists(self, name: str) -> bool:
        with self.store.transaction() as tx:
            return tx.one("SELECT 1 FROM staff WHERE name = ?", name) is not None

    def _check_login(self, table: str, name: str, password: str) -> bool:
        with self.store.transaction() as tx:
            row = tx.one(f"SELECT password_hash, salt, scrypt_log_n FROM {table} WHERE name = ?", name)
        # the same work whether or not the account exists: no way to tell which names exist
        salt, log_n = (bytes(row[1]), int(row[2])) if row else (b"\0" * 16, LOG_N[table])
        candidate = crypto.password_hash(password, salt, log_n=log_n)
        return row is not None and crypto.equal(candidate, bytes(row[0]))

    def accounts(self) -> list[dict[str, Any]]:
        """Every account with its balance and card on file (the staff's list)."""
        with self.store.transaction() as tx:
            rows = tx.all(
                "SELECT a.name, a.card_last4, a.created, COALESCE(SUM(l.cents), 0) FROM accounts a"
                " LEFT JOIN ledger l ON l.account = 'user:' || a.name GROUP BY a.name, a.card_last4, a.created"
                " ORDER BY a.name"
            )
        return [
            {"name": n, "card_on_file": f"**** {c}" if c else None, "created": t, "balance_cents": -b}
            for n, c, t, b in rows
        ]

    def revenue(self) -> dict[str, Any]:
        """Charges, with the platform's and the broker's shares, per title and per day (UTC)."""
        with self.store.transaction() as tx:
            rows = tx.all("SELECT what, at, cents, platform, broker FROM charges ORDER BY at")
        by_title: dict[str, list[int]] = {}
        by_day: dict[str, list[int]] = {}
        for what, at, c, plat, brok in rows:
            for table, key in ((by_title, what.split(" ", 1)[0]), (by_day, time.strftime("%Y-%m-%d", time.gmtime(at)))):
                row = table.setdefault(key, [0, 0, 0, 0])
                row[0] += 1
                row[1] += c
                row[2] += plat
                row[3] += brok
        return {"by_title": sorted(by_title.items()), "by_day": sorted(by_day.items())}

    def _require(self, tx: Tx, name: str) -> Row:
        row = tx.one("SELECT card_token, card_last4 FROM accounts WHERE name = ?", name)
        if row is None:
            raise StateError(f"no account {name}")
        return row

    def set_card(self, name: str, number: str) -> str:
        token, last4 = self.processor.tokenize(number)
        with self.store.transaction() as tx:
            self._require(tx, name)
            tx.execute("UPDATE accounts SET card_token = ?, card_last4 = ? WHERE name = ?", token, last4, name)
            self._audit(tx, "broker", "card-on-file", name, last4=last4)
        return last4

    def topup(self, name: str, cents: int, number: str | None = None, *, by: str = "broker") -> tuple[str, int]:
        """Pay ``cents`` into the prepaid balance with the card on file (or ``number``); returns
        the top-up's transaction and the balance after it. ``by``: who did it, for the audit log
        (``staff:NAME`` at the desk)."""
        if cents <= 0:
            raise StateError("a top-up is a positive amount")
        with self.store.transaction() as tx:
            token, _ = self._require(tx, name)
        if number:
            token, _ = self.processor.tokenize(number)
        if not token:
            raise PaymentDeclined(f"account {name} has no card on file to pay the top-up with")
        auth = self.processor.authorize(token, cents)
        self.processor.capture(auth)
        txn = "txn_" + secrets.token_hex(8)
        with self.store.transaction() as tx:
            self._post(tx, txn, [("processor:receivable", cents), (f"user:{name}", -cents)], f"top-up {auth}")
            self._audit(tx, by, "top-up", name, amount=money(cents, self.config.currency), txn=txn)
        return txn, self.balance(name)

    def balance(self, name: str) -> int:
        with self.store.transaction() as tx:
            row = tx.row("SELECT COALESCE(SUM(cents), 0) FROM ledger WHERE account = ?", f"user:{name}")
        return -int(row[0])

    def statement(self, name: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            token, last4 = self._require(tx, name)
            entries = tx.all("SELECT at, txn, cents, memo FROM ledger WHERE account = ? ORDER BY id", f"user:{name}")
            charges = tx.all("SELECT at, txn, cents, what, method FROM charges WHERE account = ? ORDER BY at", name)
        return {
            "account": name,
            "balance_cents": -sum(e[2] for e in entries),
            "card_on_file": f"**** {last4}" if last4 else None,
            "prepaid_entries": [{"at": a, "txn": t, "cents": -c, "memo": m} for a, t, c, m in entries],
            "charges": [{"at": a, "txn": t, "cents": c, "what": w, "method": m} for a, t, c, w, m in charges],
        }

    def ledger_totals(self) -> dict[str, Any]:
        with self.store.transaction() as tx:
            total = tx.row("SELECT COALESCE(SUM(cents), 0) FROM ledger")[0]
            by_account: dict[str, int] = dict(tx.all("SELECT account, SUM(cents) FROM ledger GROUP BY account"))
            charged = tx.row(
                "SELECT COALESCE(SUM(cents), 0), COALESCE(SUM(platform), 0), COALESCE(SUM(broker), 0) FROM charges"
            )
            unbalanced = tx.all("SELECT txn FROM ledger GROUP BY txn HAVING SUM(cents) <> 0")
        platform, broker = -by_account.get("revenue:platform", 0), -by_account.get("revenue:broker", 0)
        balanced = (
            total == 0
            and not unbalanced
            and platform + broker == charged[0]
            and (platform, broker) == (charged[1], charged[2])
        )
        return {
            "balanced": balanced,
            "sum_of_entries": total,
            "unbalanced_transactions": [r[0] for r in unbalanced],
            "charges": charged[0],
            "platform": -by_account.get("revenue:platform", 0),
            "broker": -by_account.get("revenue:broker", 0),
            "platform_in_charges": charged[1],
            "broker_in_charges": charged[2],
            "accounts": {k: v for k, v in sorted(by_account.items())},
        }

    def _post(self, tx: Tx, txn: str, entries: list[tuple[str, int]], memo: str) -> None:
        assert sum(c for _, c in entries) == 0, "a ledger transaction must balance"
        for account, cents in entries:
            tx.execute(
                "INSERT INTO ledger (txn, account, cents, memo, at) VALUES (?, ?, ?, ?, ?)",
                txn,
                account,
                cents,
                memo,
                self._now(),
            )

    # -- charging -------------------------------------------------------------------------------

    def hold(self, name: str) -> Hold:
        """Reserve the price of a key: from the prepaid balance, else on the card on file."""
        cents = self.config.price_cents
        hold_id = "hold_" + secrets.token_hex(8)
        with self.store.transaction() as tx:
            token, _ = self._require(tx, name)
            balance = -tx.row("SELECT COALESCE(SUM(cents), 0) FROM ledger WHERE account = ?", f"user:{name}")[0]
            held = tx.row(
                "SELECT COALESCE(SUM(cents), 0) FROM holds WHERE account = ? AND method = 'prepaid' AND state = 'held'",
                name,
            )[0]
            if balance - held >= cents:
                tx.execute(
                    "INSERT INTO holds (hold, account, cents, method, state, at)"
                    " VALUES (?, ?, ?, 'prepaid', 'held', ?)",
                    hold_id,
                    name,
                    cents,
                    self._now(),
                )
                return Hold(hold_id, name, cents, "prepaid")
        if not token:
            raise PaymentDeclined(
                f"the prepaid balance of {name} is too low ({_money(balance - held)}) and no card is on file"
            )
        auth = self.processor.authorize(token, cents)  # PaymentDeclined: the server is never asked
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO holds (hold, account, cents, method, auth, state, at)"
                " VALUES (?, ?, ?, 'card', ?, 'held', ?)",
                hold_id,
                name,
                cents,
                auth,
                self._now(),
            )
        return Hold(hold_id, name, cents, "card", auth)

    def capture(self, h: Hold, what: str) -> None:
        platform = h.cents * self.config.platform_share // 100
        broker = h.cents - platform
        if h.method == "card" and h.auth:
            self.processor.capture(h.auth)
        payer = f"user:{h.account}" if h.method == "prepaid" else "processor:receivable"
        with self.store.transaction() as tx:
            if not tx.execute("UPDATE holds SET state = 'captured' WHERE hold = ? AND state = 'held'", h.hold):
                return  # captured already
            txn = "txn_" + secrets.token_hex(8)
            self._post(
                tx,
                txn,
                [(payer, h.cents), ("revenue:platform", -platform), ("revenue:broker", -broker)],
                f"key for {what}",
            )
            tx.execute(
                "INSERT INTO charges (txn, account, cents, platform, broker, what, method, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                txn,
                h.account,
                h.cents,
                platform,
                broker,
                what,
                h.method,
                self._now(),
            )
            self._audit(
                tx,
                f"account:{h.account}",
                "charge",
                what,
                cents=h.cents,
                method=h.method,
                txn=txn,
                platform=platform,
                broker=broker,
            )

    def release(self, h: Hold) -> None:
        if h.method == "card" and h.auth:
            self.processor.void(h.auth)
        with self.store.transaction() as tx:
            tx.execute("UPDATE holds SET state = 'released' WHERE hold = ? AND state = 'held'", h.hold)

    # -- the relayed flows ------------------------------------------------------------------------

    def register(self, account: str, req: p.RegisterRequest) -> p.RegisterResponse:
        return self._relay("/v1/broker/register", req, p.RegisterResponse, account)

    def confirm(self, account: str, req: p.ConfirmRequest) -> p.Done:
        return self._relay("/v1/broker/confirm", req, p.Done, account)

    def acquire(self, account: str, req: p.AcquireRequest) -> p.AcquireResponse:
        return self._charged("/v1/broker/acquire", req, account)

    def purchase(self, account: str, req: p.PurchaseRequest) -> p.AcquireResponse:
        return self._charged("/v1/broker/purchase", req, account)

    def _relay(self, path: str, req: p.RegisterRequest | p.ConfirmRequest, answer: type[M], account: str) -> M:
        with self.store.transaction() as tx:
            self._audit(tx, f"account:{account}", "relay", path, mc_id=req.mc_id)
        return self.relay(path, req, answer)

    def _charged(self, path: str, req: p.AcquireRequest, account: str) -> p.AcquireResponse:
        try:
            h = self.hold(account)
        except PaymentDeclined as declined:
            # No money for a new key; but the keys of one already paid for (a lost answer) are free.
            fields = {k: getattr(req, k) for k in p.AcquireRequest.__dataclass_fields__}
            try:
                resp = self.relay("/v1/broker/refetch", p.AcquireRequest(**fields), p.BrokerAcquireResponse)
            except Refusal:
                raise declined from None
            return p.AcquireResponse(**{k: v for k, v in resp.__dict__.items() if k != "first_issue"})
        try:
            resp = self.relay(path, req, p.BrokerAcquireResponse)
        except BaseException:
            self.release(h)  # refused, unreachable, or anything else: nothing issued, nothing paid
            raise
        if resp.first_issue:
            self.capture(h, f"{resp.title_id} ({path.rsplit('/', 1)[1]}, card {req.mc_id})")
        else:
            self.release(h)  # the keys of a MID this user has paid for already
        fields = {k: v for k, v in resp.__dict__.items() if k != "first_issue"}
        return p.AcquireResponse(**fields)


def _money(cents: int) -> str:
    return f"{cents / 100:.2f}"
