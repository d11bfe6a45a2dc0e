"""The licensing server's read-model: what operators' tools read of the database, in one place.

The repair center's web console (:mod:`vhw.webconsole.repair`) and the server's credential check
read the database through these methods, never with SQL of their own: the schema is the store's
and the service's business. Every method is one short read transaction (blocking: run it in a
worker thread).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..ids import Id, IdKind
from . import records
from .store import Row, Store, Tx

__all__ = ["Queries", "token_hash"]


def token_hash(token: str) -> bytes:
    """What the database keeps of a credential's token: its SHA-256 (it never holds a token)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Found:
    """What a look-up by any label found: the user entries that hold it, the disc (for a MID),
    and a hint when nothing did. A retired device's ID finds the user it was retired from, with
    ``retired`` saying when, by what and what replaced it."""

    users: list[Row]
    media: Row | None
    hint: str
    retired: Retirement | None = None


@dataclass(frozen=True)
class Retirement:
    """A device ID that a repair or a reissue took out of use (from the audit log)."""

    device: str  # what it was: "memory card", "console" or "HDD"
    ident: str
    at: int
    action: str  # the audit entry's kind: repair-device or reissue-card
    user_id: str
    replaced_by: str


@dataclass(frozen=True)
class RepairResult:
    user_id: str
    at: int
    retired: list[Retirement]
    kept: int  # the user's discs, kept for the user alone


_RETIRING = ("repair-device", "reissue-card")
_DEVICE_NAMES = {"MC": "memory card", "CL": "console", "HD": "HDD"}


def _retirement(at: int, action: str, subject: str, detail: str) -> Retirement:
    d = json.loads(detail)
    old, new = (d["old_mc_id"], d["new_mc_id"]) if action == "reissue-card" else (d["replaced"], d["by"])
    return Retirement(_DEVICE_NAMES.get(str(old)[:2], "device"), str(old), int(at), action, subject, str(new))


_USER_COLUMNS = {IdKind.USER: "user_id", IdKind.CARD: "mc_id", IdKind.CLIENT: "client_id", IdKind.HDD: "hdd_id"}
_DEVICE_TABLES = {
    IdKind.CARD: ("cards", "mc_id"),
    IdKind.CLIENT: ("consoles", "client_id"),
    IdKind.HDD: ("hdds", "hdd_id"),
}


class Queries:
    def __init__(self, store: Store):
        self.store = store

    # -- credentials ------------------------------------------------------------------------------

    def credential(self, digest: bytes) -> tuple[str, str] | None:
        """(role, name) of the credential whose token hashes to ``digest``, or None: the one
        credential look-up of the server's endpoints and its web console."""
        with self.store.transaction() as tx:
            row = records.credential(tx, digest)
        return (row.role, row.name) if row else None

    # -- look-ups -----------------------------------------------------------------------------------

    def find(self, ident: Id) -> Found:
        column = _USER_COLUMNS.get(ident.kind)
        with self.store.transaction() as tx:
            if column:
                users = tx.all(
                    f"SELECT user_id, mc_id, client_id, hdd_id, created FROM users WHERE {column} = ? ORDER BY created",
                    str(ident),
                )
                if users:
                    return Found(users, None, "")
                retired = self._retired(tx, ident)
                if retired is not None:
                    users = tx.all(
                        "SELECT user_id, mc_id, client_id, hdd_id, created FROM users WHERE user_id = ?",
                        retired.user_id,
                    )
                    return Found(users, None, "", retired)
                return Found([], None, self._retired_hint(tx, ident))
            row = tx.one(
                "SELECT m.mid, m.title_id, t.name, m.flagged_by, m.flagged_at, m.confirmed_at, m.purchased"
                " FROM media m JOIN titles t ON t.title_id = m.title_id WHERE m.mid = ?",
                str(ident),
            )
            users = []
            if row and row.flagged_by:
                users = tx.all(
                    "SELECT user_id, mc_id, client_id, hdd_id, created FROM users WHERE user_id = ?", row.flagged_by
                )
            return Found(users, row, "" if row else f"No disc with {ident} was pressed.")

    @staticmethod
    def _retired(tx: Tx, ident: Id) -> Retirement | None:
        """When and how ``ident`` was retired, from the audit entry that retired it (or None)."""
        if ident.kind not in _DEVICE_TABLES:
            return None
        for at, action, subject, detail in tx.all(
            "SELECT at, action, subject, detail FROM audit WHERE action IN (?, ?) AND detail LIKE ? ORDER BY seq DESC",
            *_RETIRING,
            f'%"{ident}"%',
        ):
            found = _retirement(at, action, subject, detail)
            if found.ident == str(ident):
                return found
        return None

    @staticmethod
    def _retired_hint(tx: Tx, ident: Id) -> str:
        found = _DEVICE_TABLES.get(ident.kind)
        if found:
            table, column = found
            row = tx.one(f"SELECT registered, retired FROM {table} WHERE {column} = ?", str(ident))
            if row and row.retired is not None:
                return f"{ident} was retired (replaced by a repair or reissue); its audit entries tell by what."
            if row:
                return f"{ident} is registered, but no user entry holds it yet."
        return f"No user entry holds {ident}."

    def user(self, user: Id) -> dict[str, Any] | None:
        """A user entry with its devices (registered, retired, public key), titles, the cards it
        had (from the reissues in the audit log) and its latest audit entries."""
        with self.store.transaction() as tx:
            entry = tx.one(
                "SELECT user_id, mc_id, client_id, hdd_id, created, card_epoch FROM users WHERE user_id = ?", str(user)
            )
            if entry is None:
                return None
            _, mc_id, client_id, hdd_id, created, epoch = entry
            console = tx.one("SELECT registered, retired, public_key FROM consoles WHERE client_id = ?", client_id)
            hdd = tx.one("SELECT registered, retired, public_key FROM hdds WHERE hdd_id = ?", hdd_id)
            card = tx.one("SELECT registered, retired FROM cards WHERE mc_id = ?", mc_id)
            titles = tx.all(
                "SELECT m.mid, m.title_id, t.name, m.flagged_at, m.confirmed_at, m.purchased FROM media m"
                " JOIN titles t ON t.title_id = m.title_id WHERE m.flagged_by = ? ORDER BY m.flagged_at",
                str(user),
            )
            cards = tx.all(
                "SELECT at, detail FROM audit WHERE action = 'reissue-card' AND subject = ? ORDER BY seq", str(user)
            )
            entries = self._audit_rows(tx, str(user), None, None, None, 0, 50)
            retired = tx.all(
                "SELECT at, action, subject, detail FROM audit WHERE subject = ? AND action IN (?, ?) ORDER BY seq",
                str(user),
                *_RETIRING,
            )
        epochs = [{"epoch": 0, "mc_id": json.loads(cards[0].detail)["old_mc_id"] if cards else mc_id, "at": created}]
        for at, detail in cards:
            d = json.loads(detail)
            epochs.append({"epoch": d.get("epoch"), "mc_id": d.get("new_mc_id"), "at": at})
        return {
            "entry": entry,
            "epoch": epoch,
            "epochs": epochs,
            "console": console,
            "hdd": hdd,
            "card": card,
            "titles": titles,
            "entries": entries,
            "retired": [_retirement(*row) for row in retired],
        }

    # -- repairs ----------------------------------------------------------------------------------

    def last_repair(self, user: Id) -> int:
        """The audit entry that closed the user's latest repair (its ``keep-flags``)."""
        with self.store.transaction() as tx:
            row = tx.row("SELECT MAX(seq) AS seq FROM audit WHERE subject = ? AND action = 'keep-flags'", str(user))
        return int(row.seq)

    def repair_result(self, seq: int) -> RepairResult | None:
        """What the repair closed by audit entry ``seq`` changed: the devices it retired (the
        ``repair-device`` entries since the user's repair before it) and the discs kept."""
        with self.store.transaction() as tx:
            row = tx.one("SELECT at, subject, detail FROM audit WHERE seq = ? AND action = 'keep-flags'", seq)
            if row is None:
                return None
            at, user, detail = row
            before = tx.row(
                "SELECT COALESCE(MAX(seq), 0) AS seq FROM audit"
                " WHERE subject = ? AND action = 'keep-flags' AND seq < ?",
                user,
                seq,
            )
            retired = tx.all(
                "SELECT at, action, subject, detail FROM audit"
                " WHERE subject = ? AND action = 'repair-device' AND seq > ? AND seq < ? ORDER BY seq",
                user,
                before.seq,
                seq,
            )
        return RepairResult(str(user), int(at), [_retirement(*r) for r in retired], int(json.loads(detail)["count"]))

    # -- the audit log ------------------------------------------------------------------------------

    def audit_page(
        self, ident: str | None, action: str | None, since: int | None, until: int | None, offset: int, limit: int
    ) -> list[Row]:
        with self.store.transaction() as tx:
            return self._audit_rows(tx, ident, action, since, until, offset, limit)

    def audit_kinds(self) -> list[str]:
        with self.store.transaction() as tx:
            return [r.action for r in tx.all("SELECT DISTINCT action FROM audit ORDER BY action")]

    @staticmethod
    def _audit_rows(
        tx: Tx, ident: str | None, action: str | None, since: int | None, until: int | None, offset: int, limit: int
    ) -> list[Row]:
        where: list[str] = []
        args: list[object] = []
        if ident:
            where.append("(subject = ? OR detail LIKE ?)")
            args += [ident, f'%"{ident}"%']
        if action:
            where.append("action = ?")
            args.append(action)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if until is not None:
            where.append("at < ?")
            args.append(until)
        sql = "SELECT seq, at, actor, action, subject, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return tx.all(sql + " ORDER BY seq DESC LIMIT ? OFFSET ?", *args, limit, offset)

    # -- the dashboard ------------------------------------------------------------------------------

    def keys_issued_per_hour(self, since: int) -> dict[int, int]:
        with self.store.transaction() as tx:
            rows = tx.all(
                "SELECT at / 3600 AS hour, COUNT(*) AS n FROM audit WHERE action = 'issue-keys' AND at >= ?"
                " GROUP BY at / 3600",
                since,
            )
        return {int(h): int(n) for h, n in rows}

    def refusals_since(self, since: int) -> dict[str, int]:
        """The refusals the audit log holds since ``since``, by kind (``registration-refused`` ...)."""
        with self.store.transaction() as tx:
            rows = tx.all(
                "SELECT action, COUNT(*) AS n FROM audit WHERE action LIKE 'refuse-%' AND at >= ? GROUP BY action",
                since,
            )
        return {str(action).removeprefix("refuse-"): int(n) for action, n in rows}

    def installs(self) -> tuple[int, int]:
        """(confirmed, pending) installs of flagged discs."""
        with self.store.transaction() as tx:
            row = tx.row(
                "SELECT COALESCE(SUM(CASE WHEN confirmed_at IS NULL THEN 0 ELSE 1 END), 0) AS confirmed,"
                " COALESCE(SUM(CASE WHEN confirmed_at IS NULL THEN 1 ELSE 0 END), 0) AS pending"
                " FROM media WHERE flagged_by IS NOT NULL"
            )
        return int(row.confirmed), int(row.pending)
