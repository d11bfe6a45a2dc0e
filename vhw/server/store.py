"""The licensing server's database: versioned schema, transactions, SQLite and PostgreSQL.

SQL is written once, with ``?`` placeholders and types both engines accept (BYTEA and BIGINT are
valid SQLite type names with the right affinities); the PostgreSQL store translates placeholders.
Every call is blocking: the server runs them in worker threads, never on the trio loop.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so that a committed flag
survives a killed process or a power cut, and write transactions start with ``BEGIN IMMEDIATE`` so
they queue instead of failing. PostgreSQL serves several server processes at once; a migration
takes an advisory lock so that two processes starting together apply it once.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from ..errors import FileError, NetworkError, StateError

__all__ = ["Row", "SqliteStore", "Store", "Tx"]


log = logging.getLogger(__name__)


# Each migration is a list of statements; a statement is SQL, or {"sqlite": ..., "postgres": ...}
# where the two engines differ. Keys (MC-Key, Content-Key, Content-Gen-Key) are stored encrypted
# under the server's master key (vhw.bindings.at_rest): a dump of this database holds no key.
MIGRATIONS: list[list[Any]] = [
    [  # 1: the patent's database 3, roles, audit log, attempt counter
        "CREATE TABLE credentials (token_hash BYTEA PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL,"
        " created BIGINT NOT NULL)",
        "CREATE TABLE consoles (client_id TEXT PRIMARY KEY, registered BIGINT NOT NULL, retired BIGINT)",
        "CREATE TABLE hdds (hdd_id TEXT PRIMARY KEY, registered BIGINT NOT NULL, retired BIGINT)",
        "CREATE TABLE cards (mc_id TEXT PRIMARY KEY, mc_key BYTEA NOT NULL, registered BIGINT NOT NULL,"
        " retired BIGINT)",
        "CREATE TABLE titles (title_id TEXT PRIMARY KEY, name TEXT NOT NULL, content_key BYTEA NOT NULL,"
        " title_digest BYTEA NOT NULL, registered BIGINT NOT NULL)",
        "CREATE TABLE media (mid TEXT PRIMARY KEY, title_id TEXT NOT NULL REFERENCES titles (title_id),"
        " registered BIGINT NOT NULL, flagged_by TEXT, flagged_at BIGINT, confirmed_at BIGINT)",
        "CREATE INDEX media_flagged_by ON media (flagged_by)",
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, mc_id TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL,"
        " hdd_id TEXT NOT NULL, content_gen_key BYTEA NOT NULL, created BIGINT NOT NULL)",
        "CREATE INDEX users_client_id ON users (client_id)",
        "CREATE INDEX users_hdd_id ON users (hdd_id)",
        {
            "sqlite": "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at BIGINT NOT NULL,"
            " actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL)",
            "postgres": "CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL,"
            " actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL)",
        },
        "CREATE TABLE attempts (subject TEXT NOT NULL, at BIGINT NOT NULL)",
        "CREATE INDEX attempts_subject ON attempts (subject, at)",
    ],
    [  # 2: card epochs (FIG. 14: a reissued card supersedes the old one, even offline)
        "ALTER TABLE users ADD COLUMN card_epoch BIGINT NOT NULL DEFAULT 0",
    ],
    [  # 3: licenses bought for discs pressed without a MID (FIG. 15)
        "ALTER TABLE media ADD COLUMN purchased BIGINT NOT NULL DEFAULT 0",
    ],
    [  # 4: each console's and HDD's public key: issued keys are sealed to the user's devices;
        # which publisher registered a title: only it registers the title's MIDs
        "ALTER TABLE consoles ADD COLUMN public_key BYTEA",
        "ALTER TABLE hdds ADD COLUMN public_key BYTEA",
        "ALTER TABLE titles ADD COLUMN publisher TEXT",
    ],
    [  # 5: the audit log's hash chain (vhw.server.audit): each entry's place in it, and its links
        "ALTER TABLE audit ADD COLUMN position BIGINT",
        "ALTER TABLE audit ADD COLUMN prev_hash BYTEA",
        "ALTER TABLE audit ADD COLUMN hash BYTEA",
        "CREATE UNIQUE INDEX audit_position ON audit (position)",
        # which master key the keys at rest are encrypted under (a fingerprint of it, not the key):
        # a rotation changes both in one transaction
        "CREATE TABLE master_key (fingerprint BYTEA NOT NULL)",
    ],
    [  # 6: the public key of each pressed disc's own secret: an acquisition proves the disc, not
        # only its printed MID (MIDs registered before have none and are refused)
        "ALTER TABLE media ADD COLUMN disc_key BYTEA",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class Conflict(Exception):
    """A transaction lost a race with another (a unique key taken meanwhile, a serialization
    failure, a deadlock): run it again, and it will see what the other one did."""


class Unavailable(Exception):
    """The database cannot take this transaction now: the connection was lost, the server is
    read-only (a primary being demoted, a replica), or no connection came within the checkout
    time (a failover under way). ``maybe_committed``: the failure came while committing, so the
    transaction may have committed; otherwise nothing of it did, and running it again is safe."""

    def __init__(self, message: str, *, maybe_committed: bool, slow: bool = False) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed
        self.slow = slow  # it waited out a timeout already (statement, checkout): not rerun at once


class Row(Protocol):
    """A row as both drivers return it: its columns by name (``row.mc_key``: a statement names each
    column it selects, ``COUNT(*) AS n``), or unpacked in the order selected. Only the store's
    modules write SQL (tests/test_store_faces.py), and nothing reads a column by its place."""

    def __getattr__(self, name: str) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> Any:
    return collections.namedtuple("Row", names, rename=True)  # (a class per query shape)


def _named_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Any:
    """SQLite's rows as named tuples (psycopg's ``namedtuple_row`` on PostgreSQL)."""
    return _row_class(tuple(d[0] for d in cursor.description))._make(values)


class Tx:
    """One transaction: run statements, read rows (named: :class:`Row`)."""

    def __init__(self, cursor: Any, translate: Callable[[str], str], dialect: str = "sqlite") -> None:
        self._cur = cursor
        self._translate = translate
        self.dialect = dialect  # "sqlite" or "postgres": where a statement is written for each

    def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; how many rows it changed."""
        self._cur.execute(self._translate(sql), args)
        return int(self._cur.rowcount)

    def write(self, sql: str, *args: Any) -> None:
        """Run a statement whose count nobody asks (an insert)."""
        self._cur.execute(self._translate(sql), args)

    def one(self, sql: str, *args: Any) -> Row | None:
        self._cur.execute(self._translate(sql), args)
        return cast("Row | None", self._cur.fetchone())

    def row(self, sql: str, *args: Any) -> Row:
        """The one row a query always answers (an aggregate, or a row this transaction saw)."""
        found = self.one(sql, *args)
        if found is None:
            raise StateError(f"the database answered no row where one must be: {sql.split()[0]} ...")
        return found

    def all(self, sql: str, *args: Any) -> list[Row]:
        self._cur.execute(self._translate(sql), args)
        return cast("list[Row]", self._cur.fetchall())

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._cur.executemany(self._translate(sql), rows)

    def audit(self, at: int, actor: str, entries: list[tuple[str, object, dict[str, object]]]) -> None:
        """The one writer of the audit log: entries (action, subject, detail) by ``actor`` at ``at``,
        in this order, in one statement (one round trip on PostgreSQL). The chainer links them
        after the commit (:mod:`vhw.server.auditlog`)."""
        values = [
            x
            for action, subject, detail in entries
            for x in (at, actor, action, str(subject), json.dumps(detail, sort_keys=True, default=str))
        ]
        self.write(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * len(entries)),
            *values,
        )


P = ParamSpec("P")
R = TypeVar("R")
#: Seconds before each rerun of a call the database failed before anything could commit.
RERUNS = (0.05, 0.15, 0.4)
CONFLICT_RERUNS = 4  # a call that lost a race runs again at once, at most this many times


class Store:
    """Common interface: ``with store.transaction() as tx: ...`` commits or rolls back;
    ``store.run(fn, ...)`` runs a call of one or more transactions under the server's one retry
    policy."""

    dialect = ""
    group_commits = False  # whether group() makes one commit of several transactions

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """The server's one retry policy, for a call whose transactions each run whole or not at all:

        * a :class:`Conflict` (it lost a race) runs again at once: the rerun sees the winner's
          row and answers as for a repeated request;
        * an :class:`Unavailable` before anything could commit (a connection of an old primary, say)
          runs again on a fresh connection after a short pause (``RERUNS``); one that came while
          committing, or after a timeout, is raised at once: the client's retry meets the
          server's lost-answer path.
        """
        conflicts, pauses = 0, iter(RERUNS)
        while True:
            try:
                return fn(*args, **kwargs)
            except Conflict:
                conflicts += 1
                if conflicts > CONFLICT_RERUNS:
                    raise
                log.info("transaction conflict in %s; running it again", getattr(fn, "__name__", fn))
            except Unavailable as exc:
                pause = next(pauses, None)
                if exc.maybe_committed or exc.slow or pause is None:
                    raise
                time.sleep(pause)

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def writable(self) -> bool:
        """Whether the database takes writes now (a PostgreSQL replica or a lost primary does not)."""
        return True

    def group(self) -> contextlib.AbstractContextManager[None]:
        """Run several transactions (from one thread) as one commit, where the engine gains from
        it (SQLite: one fsync). Each still fails alone. PostgreSQL commits each on its own."""
        return contextlib.nullcontext()

    def migrate(self, migrations: list[list[Any]] | None = None) -> int:
        """Bring the schema to the last of ``migrations`` (default: the licensing server's);
        returns the version found before."""
        migrations = MIGRATIONS if migrations is None else migrations
        target = len(migrations)
        with self.transaction() as tx:
            self._lock_for_migration(tx)
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = tx.one("SELECT version FROM schema_version")
            before = row.version if row else 0
            if before > target:
                raise StateError(f"the database has schema version {before}; this vhw knows {target}")
            for version in range(before + 1, target + 1):
                for stmt in migrations[version - 1]:
                    tx.execute(stmt[self.dialect] if isinstance(stmt, dict) else stmt)
                log.info("database schema migrated to version %d", version)
            if row:
                tx.execute("UPDATE schema_version SET version = ?", target)
            else:
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", target)
        return before

    def _lock_for_migration(self, tx: Tx) -> None:
        pass

    def version(self) -> int:
        with self.transaction() as tx:
            try:
                row = tx.one("SELECT version FROM schema_version")
            except Exception:
                return 0
            return int(row.version) if row else 0


class _Group:
    """The transactions that share one SQLite commit (group commit)."""

    def __init__(self) -> None:
        self.members = 0
        self.done = False
        self.error: BaseException | None = None


_LOST_RACES = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}  # (extended result codes)


@contextlib.contextmanager
def _savepoint(cur: Any, name: str) -> Iterator[Tx]:
    """One transaction of a group, as a savepoint: on failure only its own work is undone (and
    a unique key taken meanwhile is a :class:`Conflict`)."""
    cur.execute(f"SAVEPOINT {name}")
    try:
        yield Tx(cur, lambda sql: sql)
    except BaseException as exc:
        cur.execute(f"ROLLBACK TO {name}")
        cur.execute(f"RELEASE {name}")
        # only a unique key taken meanwhile is a lost race, worth running again; a NOT NULL or
        # foreign-key violation is a bug, which a rerun would only repeat
        if isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorname in _LOST_RACES:
            raise Conflict(str(exc)) from exc
        raise
    cur.execute(f"RELEASE {name}")


class SqliteStore(Store):
    """SQLite with group commit: one connection, on which the transactions of all threads run one
    after another, each inside a savepoint of a shared transaction that commits once nobody is
    waiting to run one. Under load, many transactions then share one fsync of the write-ahead log
    (``synchronous=FULL``: a commit is durable when it returns) instead of paying one each.

    A transaction that fails rolls back to its savepoint alone; a transaction that succeeded
    returns only once its group has committed (and raises if the commit failed), so nothing is
    answered that is not durable. The others in a group see each other's changes before the
    commit, as they would after it: they run in the same order either way. Other processes that
    share the file still meet at BEGIN IMMEDIATE and the busy timeout.
    """

    dialect = "sqlite"
    group_commits = True

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._cv = threading.Condition()
        self._busy = False  # a transaction, or a commit, is running on the connection
        self._waiting = 0  # threads waiting to run a transaction
        self._group: _Group | None = None  # the open group, not yet committed
        self._owner: int | None = None  # the thread that is running, to refuse nesting
        self._grouped: int | None = None  # the thread whose group() is open

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
                conn.row_factory = _named_row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=60000")
            except sqlite3.DatabaseError as exc:
                raise FileError(self.path, f"cannot open the database: {exc}") from None
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """This thread's transactions in the block share one group: it commits when the block ends."""
        with self.transaction():
            self._grouped = threading.get_ident()
            try:
                yield
            finally:
                self._grouped = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        me = threading.get_ident()
        if self._grouped == me:  # inside this thread's group: a savepoint of it
            cur = self._connection().cursor()
            try:
                with _savepoint(cur, "inner") as tx:
                    yield tx
            finally:
                cur.close()
            return
        with self._cv:
            if self._owner == me:
                raise RuntimeError("nested SQLite transaction")
            self._waiting += 1
            while self._busy:
                self._cv.wait()
            self._waiting -= 1
            self._busy, self._owner = True, me
        group = None
        try:
            conn = self._connection()
            cur = conn.cursor()
            if self._group is None:
                cur.execute("BEGIN IMMEDIATE")  # writers queue here, so SQLite itself never sees a race
                self._group = _Group()
            group = self._group
            try:
                with _savepoint(cur, "tx") as tx:
                    yield tx
                group.members += 1
            finally:
                cur.close()
        except BaseException:
            self._hand_over(group, failed=True)
            raise
        self._hand_over(group, failed=False)
        self._wait_committed(group)

    def _hand_over(self, group: _Group | None, *, failed: bool) -> None:
        """Let the next waiting transaction run; or, nobody waiting, commit the group first."""
        with self._cv:
            if group is not None and not group.done and self._waiting == 0:
                self._commit(group)
            self._busy, self._owner = False, None
            self._cv.notify_all()

    def _commit(self, group: _Group) -> None:
        """(Under the condition's lock, with the connection still ours.)"""
        try:
            if group.members:
                self._connection().execute("COMMIT")
            else:
                self._connection().execute("ROLLBACK")
        except BaseException as exc:
            group.error = exc
            with contextlib.suppress(Exception):
                self._connection().execute("ROLLBACK")
        finally:
            group.done = True
            self._group = None

    def _wait_committed(self, group: _Group) -> None:
        with self._cv:
            while not group.done:
                if not self._busy and self._group is group:
                    # the others left without committing (they failed, or went on waiting): we do
                    self._busy = True
                    self._commit(group)
                    self._busy = False
                    self._cv.notify_all()
                    break
                self._cv.wait()
        if group.error is not None:
            raise StateError(f"{self.path}: the database could not commit ({group.error})") from group.error

    def close(self) -> None:
        with self._cv:
            while self._busy:
                self._cv.wait()
            if self._group is not None:
                self._busy = True
                self._commit(self._group)
                self._busy = False
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


class PostgresStore(Store):
    """PostgreSQL through a psycopg pool; also on a cluster (a libpq multi-host URL with
    ``target_session_attrs=read-write`` finds the primary, on every new connection).

    A transaction that meets a lost or read-only connection raises :class:`Unavailable` at once
    (the broken connection leaves the pool), and a checkout waits at most ``CHECKOUT`` seconds: in
    a failover a request is answered quickly (503) instead of waiting out a pool timeout. The pool
    reconnects in the background every 0.2 s (with jitter): a new primary is found within a
    fraction of a second of its promotion. (The driver's default backoff doubles from 1 s: a
    failover of 7 s became 11 to 15; and an attempt costs next to nothing, HAProxy refusing at once
    while no node is the primary.)"""

    dialect = "postgres"
    CHECKOUT = 2.0  # seconds a transaction waits for a connection

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 20,
        wait: float = 30,
        statement_timeout: float | None = None,
    ):
        from psycopg_pool import ConnectionPool, PoolTimeout  # (psycopg: only a PostgreSQL store needs it)
        from psycopg_pool.base import AttemptWithBackoff

        AttemptWithBackoff.INITIAL_DELAY, AttemptWithBackoff.DELAY_BACKOFF = 0.2, 1.0
        self.url = url
        self._commit_timeout = statement_timeout
        kwargs: dict[str, Any] = {"autocommit": False}
        if statement_timeout:
            kwargs["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
        pool_log = logging.getLogger("psycopg.pool")
        level = pool_log.level
        pool_log.setLevel(logging.ERROR)  # (the first connection's retries: the one line below says it)
        try:
            self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True, kwargs=kwargs)
            try:
                try:
                    self._pool.wait(timeout=min(1.0, wait))
                except PoolTimeout:  # (said within a second, then waited for as long as said)
                    log.warning("waiting up to %.0f s for PostgreSQL at %s", wait, _redact(url))
                    self._pool.wait(timeout=max(0.0, wait - 1.0))
            except Exception as exc:
                self._pool.close()
                raise NetworkError(f"cannot connect to PostgreSQL at {_redact(url)}: {_first_line(exc)}") from None
        finally:
            pool_log.setLevel(level)

    @staticmethod
    def _translate(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        import psycopg
        import psycopg.errors as pg  # (psycopg: only a PostgreSQL store needs it)
        from psycopg.rows import namedtuple_row
        from psycopg_pool import PoolTimeout

        committing = False
        unreplicated: list[str] = []

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            if diag.message_primary and "synchronous replication" in diag.message_primary:
                unreplicated.append(diag.message_primary)

        try:
            with self._pool.connection(timeout=self.CHECKOUT) as conn:
                conn.add_notice_handler(notice)
                armed = None
                try:
                    with conn.transaction():
                        with conn.cursor(row_factory=namedtuple_row) as cur:
                            yield Tx(cur, self._translate, "postgres")
                        committing = True
                        if self._commit_timeout:
                            armed = _WATCHDOG.arm(conn, self._commit_timeout)
                finally:
                    if armed is not None:
                        _WATCHDOG.disarm(armed)
                    conn.remove_notice_handler(notice)
        except (pg.UniqueViolation, pg.SerializationFailure, pg.DeadlockDetected) as exc:
            raise Conflict(str(exc).splitlines()[0]) from exc
        except pg.QueryCanceled as exc:  # (the statement timeout: a commit waits for no standby)
            raise Unavailable(
                f"the database did not answer in time: {_first_line(exc)}", maybe_committed=committing, slow=True
            ) from exc
        except PoolTimeout as exc:  # (an OperationalError too: first)
            raise Unavailable("no database connection (a failover?)", maybe_committed=False, slow=True) from exc
        except (psycopg.OperationalError, pg.ReadOnlySqlTransaction, pg.AdminShutdown) as exc:
            raise Unavailable(f"the database is unavailable: {_first_line(exc)}", maybe_committed=committing) from exc
        if unreplicated:
            # The commit's wait for a synchronous standby was cut short (the statement timeout):
            # committed here, but not yet on a standby, so a failover now could lose it. Not an
            # answer to give: the caller says "outcome unknown", and the client's retry finds it.
            raise Unavailable(f"committed, but no standby has it yet ({unreplicated[0]})", maybe_committed=True)

    def writable(self) -> bool:
        """Whether a primary takes writes now (for /v1/health): a quick check on a pooled connection."""
        try:
            with self.transaction() as tx:
                return not tx.row("SELECT pg_is_in_recovery() AS recovering").recovering
        except Unavailable:
            return False

    def _lock_for_migration(self, tx: Tx) -> None:
        tx.execute("SET LOCAL statement_timeout = 0")  # (a migration, or waiting for another's, may be long)
        tx.execute("SELECT pg_advisory_xact_lock(?)", 0x5648_5700)

    def pool_stats(self) -> dict[str, int]:
        return self._pool.get_stats()

    def close(self) -> None:
        self._pool.close()


class _Watchdog:
    """Cuts short a commit that waits too long for a synchronous standby (a new primary that no
    standby follows yet holds every commit). PostgreSQL's ``statement_timeout`` cannot: it is
    disarmed before the commit itself runs. So one thread here sends a cancel request for each
    commit whose deadline passed; PostgreSQL then ends the wait with a warning, having committed
    locally, which :meth:`PostgresStore.transaction` turns into "maybe committed". (A cancel that
    arrives once the commit is over finds the connection idle, and PostgreSQL ignores it.)"""

    IDLE_WAKE = 1.0  # seconds the thread sleeps with nothing due: an arm with a later deadline wakes nobody

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[int, tuple[float, Any]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._asleep_until = 0.0  # when the thread looks at the deadlines next

    def arm(self, conn: Any, seconds: float) -> int:
        """Cancel ``conn``'s statement ``seconds`` from now, unless disarmed. (Wakes the thread
        only for a deadline before the one it sleeps to: under load, never.)"""
        deadline = time.monotonic() + seconds
        with self._cv:
            self._next += 1
            self._due[self._next] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vhw-commit-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._asleep_until:
                self._cv.notify()
            return self._next

    def disarm(self, token: int) -> None:
        with self._cv:
            self._due.pop(token, None)

    def _run(self) -> None:
        with self._cv:
            while True:
                now = time.monotonic()
                if not self._due:
                    self._asleep_until = now + self.IDLE_WAKE
                    self._cv.wait(self.IDLE_WAKE)
                    continue
                token, (deadline, conn) = min(self._due.items(), key=lambda item: item[1][0])
                if deadline > now:
                    self._asleep_until = deadline
                    self._cv.wait(deadline - now)
                    continue
                del self._due[token]
                self._cv.release()  # (a cancel may take seconds: other commits arm and disarm meanwhile)
                try:
                    conn.cancel_safe(timeout=2.0)
                except Exception as exc:  # (the connection broke meanwhile: its commit fails anyway)
                    log.info("could not cancel a commit that waits too long: %s", _first_line(exc))
                finally:
                    self._cv.acquire()


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Tx]:
    """A SQLite file opened to be read and changed in nothing (a backup checked before a restore):
    its rows named as a store's. sqlite3's errors pass through: the caller names the file."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = _named_row
    try:
        yield Tx(conn.cursor(), lambda sql: sql)
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _redact(url: str) -> str:
    """A database URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user, has_password, _ = creds.partition(":")
        return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
    return url


def open_store(
    url: str, *, wait: float = 30, statement_timeout: float | None = None, pool_size: int | None = None
) -> Store:
    """``sqlite:///path/to/file.db`` or ``postgresql://...`` (``wait``: seconds to reach it;
    ``statement_timeout``: seconds PostgreSQL gives each statement, a commit's wait included;
    ``pool_size``: PostgreSQL connections this process may hold at once, 20 unless told)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, wait=wait, statement_timeout=statement_timeout, max_size=pool_size or 20)
    raise StateError(f"unknown database URL {_redact(url)!r} (sqlite:///FILE or postgresql://...)")
