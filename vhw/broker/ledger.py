"""The broker's money: accounts' cards and prepaid balances, holds, charges, and the double-entry
ledger they are written to.

A charge is made in two steps around the server's answer (:mod:`.service`): a :meth:`Ledger.hold`
reserves the price from the prepaid balance or authorises the card on file (a decline stops
there), then :meth:`Ledger.capture` takes it, or :meth:`Ledger.release` lets it go. Every capture
writes a balanced double-entry transaction (amounts in cents, debits positive, each transaction
summing to zero):

    prepaid:  user:NAME +price, revenue:platform -share, revenue:broker -rest
    card:     processor:receivable +price, revenue:platform -share, revenue:broker -rest
    top-up:   processor:receivable +amount, user:NAME -amount

so a user's prepaid balance is minus the sum of ``user:NAME``, and the platform's and broker's
revenue are minus the sums of their accounts.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import PaymentDeclined, StateError
from ..server.store import Row, Store, Tx
from . import records
from .config import BrokerConfig, money
from .payments import Processor


@dataclass(frozen=True)
class Hold:
    hold: str
    account: str
    cents: int
    method: str  # "prepaid" or "card"
    auth: str | None = None


@dataclass
class Ledger:
    store: Store
    processor: Processor
    config: BrokerConfig
    now: Callable[[], int]

    def money(self, cents: int) -> str:
        """An amount in this broker's currency, as people read it."""
        return money(cents, self.config.currency)

    # -- accounts ------------------------------------------------------------------------------

    def _account(self, tx: Tx, name: str) -> Row:
        row = records.account(tx, name)
        if row is None:
            raise StateError(f"no account {name}")
        return row

    def accounts(self) -> list[dict[str, Any]]:
        """Every account with its balance and card on file (the staff's list)."""
        with self.store.transaction() as tx:
            rows = records.accounts(tx)
        return [
            {
                "name": r.name,
                "card_on_file": f"**** {r.card_last4}" if r.card_last4 else None,
                "created": r.created,
                "balance_cents": -r.owed,
            }
            for r in rows
        ]

    def set_card(self, name: str, number: str) -> str:
        token, last4 = self.processor.tokenize(number)
        with self.store.transaction() as tx:
            self._account(tx, name)
            records.set_card(tx, name, token, last4)
            tx.audit(self.now(), "broker", [("card-on-file", name, {"last4": last4})])
        return last4

    def topup(self, name: str, cents: int, number: str | None = None, *, by: str = "broker") -> tuple[str, int]:
        """Pay ``cents`` into the prepaid balance with the card on file (or ``number``); returns
        the top-up's transaction and the balance after it. ``by``: who did it, for the audit log
        (``staff:NAME`` at the desk)."""
        if cents <= 0:
            raise StateError("a top-up is a positive amount")
        with self.store.transaction() as tx:
            token = self._account(tx, name).card_token
        if number:
            token, _ = self.processor.tokenize(number)
        if not token:
            raise PaymentDeclined(f"account {name} has no card on file to pay the top-up with")
        auth = self.processor.authorize(token, cents)
        self.processor.capture(auth)
        txn = "txn_" + secrets.token_hex(8)
        with self.store.transaction() as tx:
            self._post(tx, txn, [("processor:receivable", cents), (f"user:{name}", -cents)], f"top-up {auth}")
            tx.audit(self.now(), by, [("top-up", name, {"amount": self.money(cents), "txn": txn})])
        return txn, self.balance(name)

    def balance(self, name: str) -> int:
        with self.store.transaction() as tx:
            return -records.ledger_sum(tx, f"user:{name}")

    def statement(self, name: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            last4 = self._account(tx, name).card_last4
            entries = records.entries(tx, f"user:{name}")
            charges = records.charges(tx, name)
        return {
            "account": name,
            "balance_cents": -sum(e.cents for e in entries),
            "card_on_file": f"**** {last4}" if last4 else None,
            "prepaid_entries": [{"at": e.at, "txn": e.txn, "cents": -e.cents, "memo": e.memo} for e in entries],
            "charges": [
                {"at": c.at, "txn": c.txn, "cents": c.cents, "what": c.what, "method": c.method} for c in charges
            ],
        }

    # -- the books -----------------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        """Whether the ledger balances (every transaction, and the revenue against the charges),
        and its sums."""
        with self.store.transaction() as tx:
            total = records.ledger_sum(tx)
            by_account = records.ledger_sums(tx)
            charged = records.charged(tx)
            unbalanced = records.unbalanced(tx)
        platform, broker = -by_account.get("revenue:platform", 0), -by_account.get("revenue:broker", 0)
        balanced = (
            total == 0
            and not unbalanced
            and platform + broker == charged.cents
            and (platform, broker) == (charged.platform, charged.broker)
        )
        return {
            "balanced": balanced,
            "sum_of_entries": total,
            "unbalanced_transactions": unbalanced,
            "charges": charged.cents,
            "platform": platform,
            "broker": broker,
            "platform_in_charges": charged.platform,
            "broker_in_charges": charged.broker,
            "accounts": dict(sorted(by_account.items())),
        }

    def revenue(self) -> dict[str, Any]:
        """Charges, with the platform's and the broker's shares, per title and per day (UTC)."""
        with self.store.transaction() as tx:
            rows = records.charges(tx)
        by_title: dict[str, list[int]] = {}
        by_day: dict[str, list[int]] = {}
        for c in rows:
            for table, key in (
                (by_title, c.what.split(" ", 1)[0]),
                (by_day, time.strftime("%Y-%m-%d", time.gmtime(c.at))),
            ):
                sums = table.setdefault(key, [0, 0, 0, 0])  # keys sold, charges, platform, broker
                for i, value in enumerate((1, c.cents, c.platform, c.broker)):
                    sums[i] += value
        return {"by_title": sorted(by_title.items()), "by_day": sorted(by_day.items())}

    def _post(self, tx: Tx, txn: str, entries: list[tuple[str, int]], memo: str) -> None:
        assert sum(c for _, c in entries) == 0, "a ledger transaction must balance"
        for account, cents in entries:
            records.post(tx, txn, account, cents, memo, self.now())

    # -- charging -------------------------------------------------------------------------------

    def hold(self, name: str) -> Hold:
        """Reserve the price of a key: from the prepaid balance, else on the card on file."""
        cents = self.config.price_cents
        hold_id = "hold_" + secrets.token_hex(8)
        with self.store.transaction() as tx:
            token = self._account(tx, name).card_token
            free = -records.ledger_sum(tx, f"user:{name}") - records.prepaid_held(tx, name)
            if free >= cents:
                records.add_hold(tx, hold_id, name, cents, "prepaid", None, self.now())
                return Hold(hold_id, name, cents, "prepaid")
        if not token:
            raise PaymentDeclined(
                f"the prepaid balance of {name} is too low ({self.money(free)}) and no card is on file"
            )
        auth = self.processor.authorize(token, cents)  # PaymentDeclined: the server is never asked
        with self.store.transaction() as tx:
            records.add_hold(tx, hold_id, name, cents, "card", auth, self.now())
        return Hold(hold_id, name, cents, "card", auth)

    def capture(self, h: Hold, what: str) -> None:
        platform = h.cents * self.config.platform_share // 100
        broker = h.cents - platform
        if h.method == "card" and h.auth:
            self.processor.capture(h.auth)
        payer = f"user:{h.account}" if h.method == "prepaid" else "processor:receivable"
        with self.store.transaction() as tx:
            if not records.end_hold(tx, h.hold, "captured"):
                return  # captured already
            txn = "txn_" + secrets.token_hex(8)
            entries = [(payer, h.cents), ("revenue:platform", -platform), ("revenue:broker", -broker)]
            self._post(tx, txn, entries, f"key for {what}")
            records.add_charge(tx, txn, h.account, h.cents, platform, broker, what, h.method, self.now())
            detail = {"cents": h.cents, "method": h.method, "txn": txn, "platform": platform, "broker": broker}
            tx.audit(self.now(), f"account:{h.account}", [("charge", what, detail)])

    def release(self, h: Hold) -> None:
        if h.method == "card" and h.auth:
            self.processor.void(h.auth)
        with self.store.transaction() as tx:
            records.end_hold(tx, h.hold, "released")
