"""Who signs in to the broker: users' accounts (a console signs in with one, then keeps a token
instead of its password) and the staff (who sign in to the web console). Passwords are kept only
as scrypt hashes, each with its cost; tokens only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import crypto
from ..errors import StateError
from ..server.store import Store
from . import records

#: scrypt cost (log2 N) per kind of login. Staff sign in now and then to a web console that can
#: move money: 2^17 (128 MiB, ~0.6 s here per guess). A console's account is checked on every
#: relayed request, so it costs 2^14 (16 MiB, ~0.08 s): guessing stays expensive, serving does not.
LOG_N = {"staff": 17, "accounts": 14}


@dataclass
class Logins:
    store: Store
    now: Callable[[], int]

    def add_account(self, name: str, password: str) -> None:
        self._add("accounts", "account", name, password)

    def add_staff(self, name: str, password: str) -> None:
        """A member of the broker's staff, who signs in to the web console."""
        self._add("staff", "staff account", name, password)

    def _add(self, table: str, what: str, name: str, password: str) -> None:
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise StateError(f"{name!r} is not an account name (letters, digits, - _ .)")
        if len(password) < 8:
            raise StateError("a password has at least 8 characters")
        salt = secrets.token_bytes(16)
        log_n = LOG_N[table]
        with self.store.transaction() as tx:
            if records.login(tx, table, name):
                raise StateError(f"{what} {name} exists already")
            password_hash = crypto.password_hash(password, salt, log_n=log_n)
            records.add_login(tx, table, name, password_hash, salt, self.now(), log_n)
            tx.audit(self.now(), "broker", [(f"add-{table.rstrip('s')}", name, {})])

    def check_account(self, name: str, password: str) -> bool:
        return self._check("accounts", name, password)

    def check_staff(self, name: str, password: str) -> bool:
        return self._check("staff", name, password)

    def _check(self, table: str, name: str, password: str) -> bool:
        with self.store.transaction() as tx:
            row = records.login(tx, table, name)
        # the same work whether or not the account exists: no way to tell which names exist
        salt, log_n = (bytes(row.salt), int(row.scrypt_log_n)) if row else (b"\0" * 16, LOG_N[table])
        candidate = crypto.password_hash(password, salt, log_n=log_n)
        return row is not None and crypto.equal(candidate, bytes(row.password_hash))

    def issue_token(self, name: str) -> str:
        """A token for a console signed in as account ``name`` (its password checked by the
        caller): the console keeps it instead of the password. The broker keeps its SHA-256."""
        token = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            records.add_token(tx, hashlib.sha256(token.encode()).digest(), name, self.now())
            tx.audit(self.now(), f"user:{name}", [("issue-console-token", name, {})])
        return token

    def account_of_token(self, token: str) -> str | None:
        """The account a console's token was issued to (None: no such token). The lookup is by
        the token's SHA-256, so no comparison of the secret itself takes place."""
        with self.store.transaction() as tx:
            return records.account_of_token(tx, hashlib.sha256(token.encode()).digest())

    def remove_staff(self, name: str) -> None:
        with self.store.transaction() as tx:
            if not records.remove_staff(tx, name):
                raise StateError(f"no staff account {name}")
            tx.audit(self.now(), "broker", [("remove-staff", name, {})])

    def staff(self) -> list[dict[str, Any]]:
        """Every staff account: its name and when it was added (never its password's hash)."""
        with self.store.transaction() as tx:
            return [{"name": r.name, "created": int(r.created)} for r in records.staff(tx)]

    def staff_exists(self, name: str) -> bool:
        with self.store.transaction() as tx:
            return records.login(tx, "staff", name) is not None
