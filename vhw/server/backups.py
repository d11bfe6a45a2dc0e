"""Backups of a server home's database and their restore: online and consistent (SQLite's backup
API, or pg_dump), restored only into a new database, never over a live one, and only into the home
whose master key sealed its keys (checked before anything is written)."""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from ..crypto import equal as crypto_equal
from ..devices.files import atomic_write, describe_os_error, fsync_dir, open_regular, refuse_existing, write_error
from ..errors import FileError, StateError
from . import records
from .auditlog import read_heads
from .home import ServerHome
from .masterkey import key_fingerprint
from .store import open_store, read_only

__all__ = ["backup", "restore"]


SQLITE_MAGIC = b"SQLite format 3\0"
PGDUMP_MAGIC = b"PGDMP"


def _pg_tool(name: str) -> str:
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    found = shutil.which(name)
    if not found:
        raise StateError(f"{name} is not installed (Debian: postgresql-client)")
    return found


def backup(home: ServerHome, out: Path, database: str | None = None) -> str:
    """An online, consistent copy of the database while the server serves: SQLite's backup API
    (a snapshot of one transaction), or pg_dump (one repeatable-read transaction). Written to a
    new file ``out``, atomically; keys stay encrypted under the master key, which is not in it."""
    url = home.database_url(database)
    out = Path(out)
    refuse_existing(out, "backup")
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # the owner's alone from the start
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            src = sqlite3.connect(path, timeout=60)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            except sqlite3.DatabaseError as exc:  # (as the server says it when it opens one)
                raise FileError(path, f"cannot back up the database: {exc}") from None
            finally:
                dst.close()
                src.close()
            kind = "SQLite"
        else:
            proc = subprocess.run(
                [_pg_tool("pg_dump"), "--format=custom", "--file", str(tmp), url], capture_output=True, text=True
            )
            if proc.returncode:
                raise StateError(f"pg_dump failed: {_last_line(proc)}")
            kind = "PostgreSQL"
        os.chmod(tmp, 0o600)  # (pg_dump writes the file anew)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise write_error(out, "the backup", exc, kind=FileError) from None
    finally:
        tmp.unlink(missing_ok=True)
    return kind


def _check_backup_key(home: ServerHome, source: Path, fingerprint: bytes | None) -> None:
    """Refuse, before anything is written, a backup whose keys are encrypted under another master
    key than this home's (a backup older than the master key's table has none to compare with:
    it is checked once restored)."""
    if fingerprint is not None and not crypto_equal(fingerprint, key_fingerprint(home.keys.read())):
        raise FileError(
            source,
            f"its keys are encrypted under another master key than {home.path('master.key')}; nothing was restored",
            hint="restore into the home that made the backup, or one made from it with --from-home",
        )


def _dumped_fingerprint(source: Path) -> bytes | None:
    """The master key's fingerprint a PostgreSQL backup records (its ``master_key`` table's row),
    read with ``pg_restore`` without restoring anything."""
    proc = subprocess.run(
        [_pg_tool("pg_restore"), "--data-only", "--table=master_key", "--file=-", str(source)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise FileError(source, f"the backup is damaged (pg_restore: {_last_line(proc)})")
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("COPY ") and "master_key" in line and i + 1 < len(lines) and lines[i + 1] != "\\.":
            value = lines[i + 1].split("\t")[0]
            try:
                return bytes.fromhex(value.removeprefix("\\\\x"))
            except ValueError:
                raise FileError(source, "the backup is damaged (its master key record)") from None
    return None


def restore(home: ServerHome, source: Path, database: str | None = None) -> int:
    """Put a backup in place of this home's database, which must be new: never over a live one
    (a server running from the home, or a database that holds a schema already). Afterwards the
    audit heads file keeps only the heads the restored chain reaches. Returns the restored chain's
    length."""
    source = Path(source)
    url = home.database_url(database)
    fd = open_regular(source, os.O_RDONLY, "backup", kind=FileError)
    try:
        magic = os.pread(fd, 16, 0)
    except OSError as exc:
        raise FileError(source, f"cannot read the backup: {describe_os_error(exc)}") from None
    finally:
        os.close(fd)
    with home.stopped("restoring its database"):
        if url.startswith("sqlite:///"):
            _restore_sqlite(home, source, magic, Path(url.removeprefix("sqlite:///")))
        else:
            _restore_postgres(home, source, magic, url)
        store = home.store(database)
        try:
            store.migrate()
            home.keys.check(store)
            with store.transaction() as tx:
                reached = records.last_position(tx) or 0
                # the restore itself is part of the history (chained when the server next runs)
                detail: dict[str, object] = {"chain_position": reached}
                tx.audit(int(time.time()), "operator:restore", [("restore-database", source.name, detail)])
        finally:
            store.close()
        heads_path = home.path("audit-heads.jsonl")
        kept = [h for h in read_heads(heads_path) if h.position <= reached]
        atomic_write(heads_path, "".join(h.to_line() for h in kept).encode(), mode=0o600)
        return reached


def _restore_sqlite(home: ServerHome, source: Path, magic: bytes, target: Path) -> None:
    if not magic.startswith(SQLITE_MAGIC):
        raise FileError(source, "not a backup of a SQLite database (`vhw server backup` of one)")
    if target.exists() and target.stat().st_size > 0:
        raise StateError(
            f"{target} exists: restore refuses to overwrite a database",
            hint="restore into a new home, or move the old database away first",
        )
    try:
        with read_only(source) as tx:
            if not records.integrity_ok(tx):
                raise FileError(source, "the backup is damaged (integrity check failed)")
            fingerprint = records.master_fingerprint(tx)
    except sqlite3.DatabaseError as exc:
        raise FileError(source, f"the backup is damaged ({exc})") from None
    _check_backup_key(home, source, fingerprint)
    atomic_write(target, source.read_bytes(), mode=0o600)


def _restore_postgres(home: ServerHome, source: Path, magic: bytes, url: str) -> None:
    if not magic.startswith(PGDUMP_MAGIC):
        raise FileError(source, "not a backup of a PostgreSQL database (`vhw server backup` of one)")
    _check_backup_key(home, source, _dumped_fingerprint(source))
    store = open_store(url)
    try:
        if store.version() > 0:
            raise StateError(
                "the PostgreSQL database holds a schema already: restore refuses to overwrite it",
                hint="create an empty database for the restore",
            )
    finally:
        store.close()
    proc = subprocess.run(
        [_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "--dbname", url, str(source)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise StateError(f"pg_restore failed: {_last_line(proc)}")


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed tool said last, or its exit code."""
    text = proc.stderr.strip()
    return text.splitlines()[-1] if text else str(proc.returncode)
