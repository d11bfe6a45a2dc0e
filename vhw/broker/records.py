"""Every statement the broker runs, by what it means, and its schema: the broker's flows
(:mod:`.logins`, :mod:`.ledger`, :mod:`.payments`) name what they read and write, this module says
how in SQL. Each function takes the transaction it runs in and returns named rows or values."""

from __future__ import annotations

from ..server.store import Row, Tx

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

#: The tables of logins: a user's account (a console signs in with it) and the staff's.
LOGINS = ("accounts", "staff")


def _logins(table: str) -> str:
    if table not in LOGINS:
        raise ValueError(table)
    return table


# -- logins ------------------------------------------------------------------------------------------


def login(tx: Tx, table: str, name: str) -> Row | None:
    """An account's or staff member's ``password_hash``, ``salt`` and ``scrypt_log_n``."""
    return tx.one(f"SELECT password_hash, salt, scrypt_log_n FROM {_logins(table)} WHERE name = ?", name)


def add_login(tx: Tx, table: str, name: str, password_hash: bytes, salt: bytes, at: int, log_n: int) -> None:
    tx.write(
        f"INSERT INTO {_logins(table)} (name, password_hash, salt, created, scrypt_log_n) VALUES (?, ?, ?, ?, ?)",
        name,
        password_hash,
        salt,
        at,
        log_n,
    )


def remove_staff(tx: Tx, name: str) -> bool:
    return bool(tx.execute("DELETE FROM staff WHERE name = ?", name))


def staff(tx: Tx) -> list[Row]:
    """``name``, ``created`` of every staff member, by name."""
    return tx.all("SELECT name, created FROM staff ORDER BY name")


def add_token(tx: Tx, token_hash: bytes, account: str, at: int) -> None:
    tx.write("INSERT INTO account_tokens (token_hash, account, created) VALUES (?, ?, ?)", token_hash, account, at)


def account_of_token(tx: Tx, token_hash: bytes) -> str | None:
    row = tx.one("SELECT account FROM account_tokens WHERE token_hash = ?", token_hash)
    return str(row.account) if row else None


# -- accounts and the ledger --------------------------------------------------------------------------


def account(tx: Tx, name: str) -> Row | None:
    """A user's account: ``card_token``, ``card_last4`` (None: no card on file)."""
    return tx.one("SELECT card_token, card_last4 FROM accounts WHERE name = ?", name)


def accounts(tx: Tx) -> list[Row]:
    """Every account by name: ``name``, ``card_last4``, ``created``, ``owed`` (the sum of its ledger account)."""
    return tx.all(
        "SELECT a.name, a.card_last4, a.created, COALESCE(SUM(l.cents), 0) AS owed FROM accounts a"
        " LEFT JOIN ledger l ON l.account = 'user:' || a.name GROUP BY a.name, a.card_last4, a.created"
        " ORDER BY a.name"
    )


def set_card(tx: Tx, name: str, token: str, last4: str) -> None:
    tx.write("UPDATE accounts SET card_token = ?, card_last4 = ? WHERE name = ?", token, last4, name)


def post(tx: Tx, txn: str, account: str, cents: int, memo: str, at: int) -> None:
    """One entry of a ledger transaction."""
    tx.write("INSERT INTO ledger (txn, account, cents, memo, at) VALUES (?, ?, ?, ?, ?)", txn, account, cents, memo, at)


def ledger_sum(tx: Tx, account: str | None = None) -> int:
    """The sum of one ledger account's entries (or of all entries)."""
    if account is None:
        return int(tx.row("SELECT COALESCE(SUM(cents), 0) AS total FROM ledger").total)
    return int(tx.row("SELECT COALESCE(SUM(cents), 0) AS total FROM ledger WHERE account = ?", account).total)


def ledger_sums(tx: Tx) -> dict[str, int]:
    """The sum of each ledger account."""
    return {r.account: int(r.total) for r in tx.all("SELECT account, SUM(cents) AS total FROM ledger GROUP BY account")}


def unbalanced(tx: Tx) -> list[str]:
    """Ledger transactions whose entries do not sum to zero (there must be none)."""
    return [r.txn for r in tx.all("SELECT txn FROM ledger GROUP BY txn HAVING SUM(cents) <> 0")]


def entries(tx: Tx, account: str) -> list[Row]:
    """One ledger account's entries in order: ``at``, ``txn``, ``cents``, ``memo``."""
    return tx.all("SELECT at, txn, cents, memo FROM ledger WHERE account = ? ORDER BY id", account)


# -- holds and charges --------------------------------------------------------------------------------


def prepaid_held(tx: Tx, name: str) -> int:
    """What holds on an account's prepaid balance keep back now."""
    return int(
        tx.row(
            "SELECT COALESCE(SUM(cents), 0) AS held FROM holds"
            " WHERE account = ? AND method = 'prepaid' AND state = 'held'",
            name,
        ).held
    )


def add_hold(tx: Tx, hold: str, name: str, cents: int, method: str, auth: str | None, at: int) -> None:
    tx.write(
        "INSERT INTO holds (hold, account, cents, method, auth, state, at) VALUES (?, ?, ?, ?, ?, 'held', ?)",
        hold,
        name,
        cents,
        method,
        auth,
        at,
    )


def end_hold(tx: Tx, hold: str, state: str) -> bool:
    """Capture or release a hold, once: whether it was still held."""
    return bool(tx.execute("UPDATE holds SET state = ? WHERE hold = ? AND state = 'held'", state, hold))


def add_charge(
    tx: Tx, txn: str, name: str, cents: int, platform: int, broker: int, what: str, method: str, at: int
) -> None:
    tx.write(
        "INSERT INTO charges (txn, account, cents, platform, broker, what, method, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        txn,
        name,
        cents,
        platform,
        broker,
        what,
        method,
        at,
    )


def charges(tx: Tx, name: str | None = None) -> list[Row]:
    """Charges in time order (of one account, or all): ``at``, ``txn``, ``cents``, ``platform``,
    ``broker``, ``what``, ``method``."""
    columns = "at, txn, cents, platform, broker, what, method"
    if name is None:
        return tx.all(f"SELECT {columns} FROM charges ORDER BY at")
    return tx.all(f"SELECT {columns} FROM charges WHERE account = ? ORDER BY at", name)


def charged(tx: Tx) -> Row:
    """The sums of all charges: ``cents``, ``platform``, ``broker``."""
    return tx.row(
        "SELECT COALESCE(SUM(cents), 0) AS cents, COALESCE(SUM(platform), 0) AS platform,"
        " COALESCE(SUM(broker), 0) AS broker FROM charges"
    )


# -- the test processor's own books --------------------------------------------------------------------


def processor_card(tx: Tx, token: str) -> Row | None:
    """A card the test processor tokenised: ``declines`` (1: it always declines)."""
    return tx.one("SELECT declines FROM processor_cards WHERE token = ?", token)


def add_processor_card(tx: Tx, token: str, declines: bool) -> None:
    tx.write("INSERT INTO processor_cards (token, declines) VALUES (?, ?)", token, int(declines))


def add_authorization(tx: Tx, auth: str, token: str, cents: int) -> None:
    tx.write("INSERT INTO processor_auths (auth, token, cents, state) VALUES (?, ?, ?, 'held')", auth, token, cents)


def end_authorization(tx: Tx, auth: str, state: str) -> None:
    tx.write("UPDATE processor_auths SET state = ? WHERE auth = ? AND state = 'held'", state, auth)
