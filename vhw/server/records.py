"""Every statement the licensing flows run, by what it means: the flows name what they read and
write (a card's sealed MC-Key, a MID's flag), this module says how in SQL.

Each function takes the transaction (:class:`~vhw.server.store.Tx`) it runs in and returns named
rows (:class:`~vhw.server.store.Row`) or plain values. Keys here are as they are at rest: sealed
under the master key (:func:`vhw.bindings.at_rest`); the flows open and seal them. IDs are passed
and returned as their labels' text.

Devices are the tables ``consoles`` (``client_id``) and ``hdds`` (``hdd_id``): :data:`DEVICES`.
"""

from __future__ import annotations

from typing import Any

from .store import Row, Tx

__all__ = ["audit_after"]


#: A registered device's table and the column of its ID.
DEVICES = {"consoles": "client_id", "hdds": "hdd_id"}


def _column(table: str) -> str:
    return DEVICES[table]  # (a KeyError for any other name: never formatted into SQL)


# -- devices, cards, titles, MIDs -----------------------------------------------------------------


def device(tx: Tx, table: str, ident: str) -> Row | None:
    """A console or HDD: ``public_key`` (None for one registered before devices had keys), ``retired``."""
    return tx.one(f"SELECT public_key, retired FROM {table} WHERE {_column(table)} = ?", ident)


def device_in_use(tx: Tx, table: str, ident: str) -> bool:
    return tx.one(f"SELECT 1 AS found FROM {table} WHERE {_column(table)} = ? AND retired IS NULL", ident) is not None


def add_device(tx: Tx, table: str, ident: str, public_key: bytes, at: int) -> None:
    tx.write(f"INSERT INTO {table} ({_column(table)}, registered, public_key) VALUES (?, ?, ?)", ident, at, public_key)


def retire_device(tx: Tx, table: str, ident: str, at: int) -> None:
    tx.write(f"UPDATE {table} SET retired = ? WHERE {_column(table)} = ?", at, ident)


def device_keys(tx: Tx, client_id: str, hdd_id: str) -> Row:
    """The registered public keys of a console and an HDD: ``console_key``, ``hdd_key`` (None: unknown)."""
    return tx.row(
        "SELECT (SELECT public_key FROM consoles WHERE client_id = ?) AS console_key,"
        " (SELECT public_key FROM hdds WHERE hdd_id = ?) AS hdd_key",
        client_id,
        hdd_id,
    )


def card(tx: Tx, mc_id: str, *, in_use: bool = False) -> Row | None:
    """A memory card: ``mc_key`` (sealed); ``in_use``: only if it was not retired (reissued)."""
    return tx.one(
        "SELECT mc_key FROM cards WHERE mc_id = ?" + (" AND retired IS NULL" if in_use else ""),
        mc_id,
    )


def add_card(tx: Tx, mc_id: str, sealed_key: bytes, at: int) -> None:
    tx.write("INSERT INTO cards (mc_id, mc_key, registered) VALUES (?, ?, ?)", mc_id, sealed_key, at)


def retire_card(tx: Tx, mc_id: str, at: int) -> None:
    tx.write("UPDATE cards SET retired = ? WHERE mc_id = ?", at, mc_id)


def title(tx: Tx, title_id: str) -> Row | None:
    """A title: ``content_key`` (sealed), ``title_digest``, ``publisher`` (None: before publishers were kept)."""
    return tx.one("SELECT content_key, title_digest, publisher FROM titles WHERE title_id = ?", title_id)


def add_title(tx: Tx, title_id: str, name: str, sealed_key: bytes, digest: bytes, at: int, publisher: str) -> None:
    tx.write(
        "INSERT INTO titles (title_id, name, content_key, title_digest, registered, publisher)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        title_id,
        name,
        sealed_key,
        digest,
        at,
        publisher,
    )


def medium(tx: Tx, mid: str) -> Row | None:
    """A MID as registered: ``title_id``, ``disc_key`` (None: a bought one, or one from before)."""
    return tx.one("SELECT title_id, disc_key FROM media WHERE mid = ?", mid)


def add_medium(tx: Tx, mid: str, title_id: str, at: int, *, disc_key: bytes | None, purchased: bool = False) -> None:
    tx.write(
        "INSERT INTO media (mid, title_id, registered, disc_key, purchased) VALUES (?, ?, ?, ?, ?)",
        mid,
        title_id,
        at,
        disc_key,
        int(purchased),
    )


# -- users ------------------------------------------------------------------------------------------

USER_IDS = ("mc_id", "client_id", "hdd_id")


def users_like(tx: Tx, ids: dict[str, str], mc_id: str) -> list[Row]:
    """User entries with all of ``ids`` (column: value, of :data:`USER_IDS`), or with the card
    ``mc_id``: ``user_id``, ``mc_id``, ``client_id``, ``hdd_id``."""
    names = sorted(ids)
    if not names or not set(names) <= set(USER_IDS):
        raise ValueError(f"identify users by a non-empty subset of {USER_IDS}")
    where = " AND ".join(f"{name} = ?" for name in names)
    return tx.all(
        f"SELECT user_id, mc_id, client_id, hdd_id FROM users WHERE ({where}) OR mc_id = ?",
        *(ids[name] for name in names),
        mc_id,
    )


def add_user(tx: Tx, user_id: str, mc_id: str, client_id: str, hdd_id: str, sealed_cgk: bytes, at: int) -> None:
    tx.write(
        "INSERT INTO users (user_id, mc_id, client_id, hdd_id, content_gen_key, created) VALUES (?, ?, ?, ?, ?, ?)",
        user_id,
        mc_id,
        client_id,
        hdd_id,
        sealed_cgk,
        at,
    )


def user(tx: Tx, user_id: str) -> Row | None:
    """A user entry: ``mc_id``, ``client_id``, ``hdd_id``, ``content_gen_key`` (sealed), ``card_epoch``."""
    return tx.one(
        "SELECT mc_id, client_id, hdd_id, content_gen_key, card_epoch FROM users WHERE user_id = ?",
        user_id,
    )


def user_of_card(tx: Tx, mc_id: str) -> Row | None:
    """The user entry of a card: ``user_id``, ``client_id``, ``hdd_id``."""
    return tx.one("SELECT user_id, client_id, hdd_id FROM users WHERE mc_id = ?", mc_id)


def move_user(tx: Tx, user_id: str, column: str, ident: str) -> None:
    """Point a user entry at a new console or HDD (``column``: ``client_id`` or ``hdd_id``)."""
    if column not in DEVICES.values():
        raise ValueError(column)
    tx.write(f"UPDATE users SET {column} = ? WHERE user_id = ?", ident, user_id)


def move_user_card(tx: Tx, user_id: str, mc_id: str, epoch: int) -> None:
    tx.write("UPDATE users SET mc_id = ?, card_epoch = ? WHERE user_id = ?", mc_id, epoch, user_id)


def acquirer(tx: Tx, mc_id: str, client_id: str, hdd_id: str, *, failures_since: int) -> Row:
    """What S13 checks of a request, in one round trip (on PostgreSQL each counts): ``failures``
    (the card's failed User ID checks since then), ``mc_key`` (sealed; None: no such card in use);
    the card's user entry (``user_id``, ``mc_id``, ``client_id``, ``hdd_id``, ``content_gen_key``,
    ``card_epoch``: None where it has none) with its devices' ``console_key`` and ``hdd_key``; and
    whether the request's console and HDD are registered and in use (``console_in_use``,
    ``hdd_in_use``)."""
    return tx.row(
        "SELECT (SELECT COUNT(*) FROM attempts WHERE subject = q.mc_id AND at > ?) AS failures, c.mc_key,"
        " u.user_id, u.mc_id, u.client_id, u.hdd_id, u.content_gen_key, u.card_epoch,"
        " (SELECT 1 FROM consoles WHERE client_id = ? AND retired IS NULL) AS console_in_use,"
        " (SELECT 1 FROM hdds WHERE hdd_id = ? AND retired IS NULL) AS hdd_in_use,"
        " (SELECT public_key FROM consoles WHERE client_id = u.client_id) AS console_key,"
        " (SELECT public_key FROM hdds WHERE hdd_id = u.hdd_id) AS hdd_key"
        " FROM (SELECT CAST(? AS TEXT) AS mc_id) q"
        " LEFT JOIN cards c ON c.mc_id = q.mc_id AND c.retired IS NULL"
        " LEFT JOIN users u ON u.mc_id = q.mc_id",
        failures_since,
        client_id,
        hdd_id,
        mc_id,
    )


def count_failure(tx: Tx, mc_id: str, at: int, *, forget_before: int) -> None:
    """A failed User ID check with this card; those before ``forget_before`` are dropped."""
    tx.write("INSERT INTO attempts (subject, at) VALUES (?, ?)", mc_id, at)
    tx.write("DELETE FROM attempts WHERE at < ?", forget_before)


# -- a MID's flag ---------------------------------------------------------------------------------------


def disc(tx: Tx, mid: str, *, with_key: bool) -> Row | None:
    """A MID with its title: ``title_id``, ``content_key`` (sealed; None unless ``with_key``),
    ``title_digest``, ``purchased``, ``disc_key``, ``flagged_by``, ``confirmed_at``."""
    return tx.one(
        f"SELECT m.title_id, {'t.content_key' if with_key else 'NULL'} AS content_key, t.title_digest,"
        " m.purchased, m.disc_key, m.flagged_by, m.confirmed_at FROM media m"
        " JOIN titles t ON t.title_id = m.title_id WHERE m.mid = ?",
        mid,
    )


def flag_disc(tx: Tx, mid: str, user_id: str, at: int, *, purchased: bool) -> Row | None:
    """S14: flag the MID for this user, and read it as :func:`disc` does (with the key), in one
    statement for an acquisition's usual case: a MID nobody flagged yet, bought or pressed as
    ``purchased`` says. One conditional UPDATE, so whoever's changes the row owns the MID under
    any concurrency. None when it is not that (unknown, flagged already, or of the other kind):
    then ask :func:`disc`. (SQLite answers from the updated table alone: there, two statements.)"""
    if tx.dialect == "sqlite":
        sql = "UPDATE media SET flagged_by = ?, flagged_at = ? WHERE mid = ? AND flagged_by IS NULL AND purchased = ?"
        flagged = tx.execute(sql, user_id, at, mid, int(purchased))
        return disc(tx, mid, with_key=True) if flagged else None
    return tx.one(
        "UPDATE media AS m SET flagged_by = ?, flagged_at = ? FROM titles t"
        " WHERE m.mid = ? AND m.flagged_by IS NULL AND m.purchased = ? AND t.title_id = m.title_id"
        " RETURNING m.title_id, t.content_key, t.title_digest, m.purchased, m.disc_key, m.flagged_by, m.confirmed_at",
        user_id,
        at,
        mid,
        int(purchased),
    )


def flag_of(tx: Tx, mid: str) -> Row | None:
    """Whose a MID is: ``flagged_by``, ``confirmed_at``."""
    return tx.one("SELECT flagged_by, confirmed_at FROM media WHERE mid = ?", mid)


def confirm(tx: Tx, mid: str, user_id: str, at: int) -> bool:
    """Make a MID this user flagged final (its install is complete), once."""
    return bool(
        tx.execute(
            "UPDATE media SET confirmed_at = ? WHERE mid = ? AND flagged_by = ? AND confirmed_at IS NULL",
            at,
            mid,
            user_id,
        )
    )


def flagged_by(tx: Tx, user_id: str) -> list[Row]:
    """The MIDs a user flagged: ``mid``, ``title_id``."""
    return tx.all("SELECT mid, title_id FROM media WHERE flagged_by = ? ORDER BY mid", user_id)


def count_flagged_by(tx: Tx, user_id: str) -> int:
    return int(tx.row("SELECT COUNT(*) AS n FROM media WHERE flagged_by = ?", user_id).n)


# -- the audit log --------------------------------------------------------------------------------------

AUDIT_COLUMNS = "seq, at, actor, action, subject, detail"


def audit_after(tx: Tx, after: int, limit: int | None = None) -> list[Row]:
    """Audit entries after ``seq``, in order: ``seq``, ``at``, ``actor``, ``action``, ``subject``, ``detail``."""
    if limit is None:
        return tx.all(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq", after)
    return tx.all(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", after, limit)


def chain_head(tx: Tx) -> Row | None:
    """The last chained entry: ``position``, ``hash``."""
    return tx.one("SELECT position, hash FROM audit WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1")


def unchained(tx: Tx, limit: int) -> list[Row]:
    """Entries not chained yet, in the order written (columns as :func:`audit_after`)."""
    return tx.all(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE position IS NULL ORDER BY seq LIMIT ?", limit)


def chain(tx: Tx, links: list[tuple[int | None, bytes | None, bytes | None, int]]) -> None:
    """Link entries into the chain: (position, prev_hash, hash, seq) each."""
    tx.executemany("UPDATE audit SET position = ?, prev_hash = ?, hash = ? WHERE seq = ?", links)


def whole_audit(tx: Tx) -> list[Row]:
    """Every entry with its links: the columns of :func:`audit_after`, ``position``, ``prev_hash``, ``hash``."""
    return tx.all(f"SELECT {AUDIT_COLUMNS}, position, prev_hash, hash FROM audit")


def last_position(tx: Tx) -> int | None:
    return tx.row("SELECT MAX(position) AS last FROM audit").last  # type: ignore[no-any-return]


def try_lock_chainer(tx: Tx, lock_id: int) -> bool:
    """PostgreSQL: whether this transaction is the chainer now (an advisory lock, dropped at its end)."""
    return bool(tx.row("SELECT pg_try_advisory_xact_lock(?) AS locked", lock_id).locked)


# -- the server's home: credentials, the master key -------------------------------------------------------


def credentials(tx: Tx) -> list[Row]:
    """``role``, ``name``, ``created`` of each credential, by role and name."""
    return tx.all("SELECT role, name, created FROM credentials ORDER BY role, name")


def credential(tx: Tx, token_hash: bytes) -> Row | None:
    """The credential of a token's SHA-256: ``role``, ``name``."""
    return tx.one("SELECT role, name FROM credentials WHERE token_hash = ?", token_hash)


def add_credential(tx: Tx, token_hash: bytes, role: str, name: str, at: int) -> None:
    tx.write(
        "INSERT INTO credentials (token_hash, role, name, created) VALUES (?, ?, ?, ?)", token_hash, role, name, at
    )


def remove_credential(tx: Tx, role: str, name: str) -> bool:
    return bool(tx.execute("DELETE FROM credentials WHERE role = ? AND name = ?", role, name))


def master_fingerprint(tx: Tx) -> bytes | None:
    """The fingerprint of the master key the keys at rest are sealed under (None: not noted yet)."""
    row = tx.one("SELECT fingerprint FROM master_key")
    return bytes(row.fingerprint) if row else None


def note_master_fingerprint(tx: Tx, fingerprint: bytes) -> None:
    if tx.execute("UPDATE master_key SET fingerprint = ?", fingerprint) == 0:
        tx.write("INSERT INTO master_key (fingerprint) VALUES (?)", fingerprint)


#: The keys at rest: (table, the sealed key's column, the row's ID column).
AT_REST = (
    ("cards", "mc_key", "mc_id"),
    ("titles", "content_key", "title_id"),
    ("users", "content_gen_key", "user_id"),
)


def sealed_keys(tx: Tx, table: str) -> list[tuple[Any, bytes]]:
    """(ID, sealed key) of every row of one of :data:`AT_REST`'s tables."""
    column, ident = next((c, i) for t, c, i in AT_REST if t == table)
    rows = tx.all(f"SELECT {ident} AS ident, {column} AS sealed FROM {table}")
    return [(row.ident, bytes(row.sealed)) for row in rows]


def reseal_keys(tx: Tx, table: str, updates: list[tuple[bytes, Any]]) -> None:
    """Write keys sealed anew: (sealed key, ID) each."""
    column, ident = next((c, i) for t, c, i in AT_REST if t == table)
    tx.executemany(f"UPDATE {table} SET {column} = ? WHERE {ident} = ?", updates)


def integrity_ok(tx: Tx) -> bool:
    """SQLite: whether the database file passes its own integrity check."""
    return bool(tx.row("PRAGMA integrity_check").integrity_check == "ok")
