"""The platform operator's state: one folder made by ``vhw server init``.

    config.json            listen address, public URL, database URL, identification policy, mode
    master.key             32 random bytes (hex) that encrypt every key at rest in the database
    ca.pem, ca-key.pem     the platform CA: console ROMs trust it; it signs the server's (and the
                           broker's) TLS certificates
    server.pem, server-key.pem   the server's TLS identity (127.0.0.1, ::1, localhost + --host)
    credentials/ROLE.json  one credential each for manufacturer, publisher, operator and broker:
                           a bearer token (the database keeps only its SHA-256), the server URL
                           and the CA, everything a role's tools need to call the server
    vhw.db                 the SQLite database (when no PostgreSQL URL is configured)

Secrets are written 0600 in a 0700 folder. ``master.key`` and a database dump are kept apart in a
real deployment: the dump alone reveals no key.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .. import bindings, crypto, pki
from ..crypto import equal as crypto_equal
from ..devices.files import atomic_write, describe_os_error, fsync_dir, refuse_existing, write_error
from ..errors import FileError, InputError, StateError
from ..ids import ID_FIELDS
from ..roles import ROLES
from . import records
from .auditlog import Chainer, read_heads
from .licensing import Licensing, Policy
from .queries import token_hash
from .store import Store, open_store, read_only

__all__ = ["Credential", "ServerHome", "backup", "restore"]

WHAT = "server home"
log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:8443"
    url: str = "https://127.0.0.1:8443"
    database: str = ""  # empty: vhw.db in the home folder
    identify_by: list[str] = field(default_factory=lambda: list(ID_FIELDS))
    mode: str = "direct"  # "broker": users reach the server only through the broker (FIG. 15)
    attempt_limit: int = 10
    attempt_window: int = 600

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> ServerConfig:
        try:
            raw = json.loads(data)
            cfg = cls(**raw)
            Policy(frozenset(cfg.identify_by), cfg.attempt_limit, cfg.attempt_window)
            if cfg.mode not in ("direct", "broker"):
                raise ValueError(f"mode {cfg.mode!r}")
        except (ValueError, TypeError) as exc:
            raise FileError(path, f"invalid server configuration: {exc}") from None
        return cfg


@dataclass
class Credential:
    role: str
    name: str
    token: str = field(repr=False)
    server: str
    ca: str  # PEM of the platform CA
    cert: str = ""  # PEM client certificate signed by the platform CA (broker mode needs it)
    key: str = field(default="", repr=False)  # its private key (PEM)
    signing: str = ""  # PEM of the platform's signing certificate (the manufacturer pins it in ROMs)

    @property
    def client_cert(self) -> tuple[str, str] | None:
        return (self.cert, self.key) if self.cert and self.key else None

    @property
    def token_hash(self) -> bytes:
        return token_hash(self.token)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def load(cls, path: Path) -> Credential:
        path = Path(path)
        try:
            raw = json.loads(path.read_bytes())
            cred = cls(**raw)
            if cred.role not in ROLES or not cred.token:
                raise ValueError
        except OSError as exc:
            raise FileError(path, f"cannot read credential: {describe_os_error(exc)}") from None
        except (ValueError, TypeError):
            raise FileError(path, "not a vhw credential file") from None
        return cred


INIT_WAIT = 5.0  # seconds `server init` waits for a database before it gives up, in one line


def public_url(url: str | None, listen: str) -> str:
    """The URL consoles and tools use: ``--url`` as a full https URL, a name, or name:port (the
    listening port by default); without it, the listening address, or this host's name when the
    server listens on every address (0.0.0.0 is no address a client can use)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not url:
        url = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(f"{url!r} is not an https:// URL a console could use")
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{name}:{parts.port or port}"


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed tool said last, or its exit code."""
    text = proc.stderr.strip()
    return text.splitlines()[-1] if text else str(proc.returncode)


class ServerHome:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root / name

    def credential_path(self, role: str) -> Path:
        return self.root / "credentials" / f"{role}.json"

    @property
    def exists(self) -> bool:
        return (self.root / "config.json").exists()

    # -- init -----------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: Path,
        *,
        listen: str = "127.0.0.1:8443",
        url: str | None = None,
        hosts: Sequence[str] = (),
        database: str = "",
        identify_by: list[str] | None = None,
        mode: str = "direct",
    ) -> ServerHome:
        return cls._staged(
            root,
            lambda staging: cls._build(
                staging, listen=listen, url=url, hosts=hosts, database=database, identify_by=identify_by, mode=mode
            ),
        )

    @classmethod
    def from_files(cls, root: Path, old: Path) -> ServerHome:
        """A new home at ``root`` made of an old home's keys, certificates, credentials and config
        (a copy of its folder, without or with its database, which is not taken): the home a
        backup is restored into on a new machine. Consoles and credentials made for the old home
        trust it as they trusted the old one."""
        source = cls(Path(old))
        if not source.exists:
            raise StateError(
                f"{old}: no server home here (no config.json)", hint="give a copy of the old home's folder"
            )
        missing = [name for name in KEPT_FILES if not source.path(name).is_file()]
        missing += [] if source.path("credentials").is_dir() else ["credentials"]
        if missing:
            raise FileError(source.path(missing[0]), "missing: the old home's keys are needed to restore")

        def copy(staging: Path) -> None:
            staging.mkdir(mode=0o700)
            for name in (*KEPT_FILES, *OPTIONAL_FILES):
                if source.path(name).is_file():
                    shutil.copy2(source.path(name), staging / name)
            shutil.copytree(source.path("credentials"), staging / "credentials")
            public = {"config.json", "ca.pem", "server.pem", "signing.pem"}
            for path in staging.rglob("*"):
                if path.is_file() and path.name not in public:  # keys, credentials: the owner's alone
                    os.chmod(path, 0o600)

        return cls._staged(root, copy)

    @classmethod
    def _staged(cls, root: Path, build: Callable[[Path], None]) -> ServerHome:
        final = cls(root)
        if final.exists:
            raise StateError(f"{root}: a server home is already here", hint="use it, or choose another --home")
        final.root.parent.mkdir(parents=True, exist_ok=True)
        # built in a folder of its own and moved into place at the end: a failed init (an
        # unreachable database, say) leaves no half-made home behind
        staging = final.root.parent / f".{final.root.name}.{os.getpid()}.init"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            build(staging)
            final.root.mkdir(exist_ok=True)
            os.chmod(final.root, 0o700)
            names = sorted(p.name for p in staging.iterdir())
            for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last: then it is a home
                os.replace(staging / name, final.root / name)
            fsync_dir(final.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    @classmethod
    def _build(
        cls,
        root: Path,
        *,
        listen: str,
        url: str | None,
        hosts: Sequence[str],
        database: str,
        identify_by: list[str] | None,
        mode: str,
    ) -> None:
        home = cls(root)
        home.root.mkdir(mode=0o700)
        (home.root / "credentials").mkdir()
        host = listen.rpartition(":")[0].strip("[]")
        url = public_url(url, listen)
        cfg = ServerConfig(
            listen=listen,
            url=url,
            database=database,
            identify_by=list(identify_by or ID_FIELDS),
            mode=mode,
        )
        Policy(frozenset(cfg.identify_by))
        ca_der, ca_key = pki.make_ca("vhw platform CA")
        names = sorted(
            {"127.0.0.1", "::1", "localhost", host, urlsplit(url).hostname or "", *hosts} - {"", "0.0.0.0", "::"}
        )
        cert_der, cert_key = pki.issue(ca_der, ca_key, "vhw licensing server", hosts=names)
        atomic_write(home.path("ca.pem"), pki.cert_pem(ca_der))
        atomic_write(home.path("ca-key.pem"), pki.key_pem(ca_key), mode=0o600)
        home._make_signing_key(ca_der, ca_key)
        atomic_write(home.path("server.pem"), pki.cert_pem(cert_der) + pki.cert_pem(ca_der))
        atomic_write(home.path("server-key.pem"), pki.key_pem(cert_key), mode=0o600)
        atomic_write(home.path("master.key"), secrets.token_bytes(32).hex().encode() + b"\n", mode=0o600)
        atomic_write(home.path("config.json"), json.dumps(asdict(cfg), indent=1).encode())
        store = open_store(home.database_url(), wait=INIT_WAIT)
        try:
            store.migrate()
            for role in ROLES:
                home.add_credential(store, role, role)
        finally:
            store.close()

    def issue_server_cert(self, name: str, hosts: list[str], out: Path) -> None:
        """A TLS server identity signed by the platform CA, for a broker: consoles trust it."""
        out.mkdir(parents=True, exist_ok=True)
        cert, key = pki.issue(
            self.ca_der(), self.ca_key(), name, hosts=sorted({"127.0.0.1", "::1", "localhost", *hosts})
        )
        atomic_write(out / "tls.pem", pki.cert_pem(cert) + pki.cert_pem(self.ca_der()))
        atomic_write(out / "tls-key.pem", pki.key_pem(key), mode=0o600)

    def credentials(self, store: Store) -> list[tuple[str, str, int]]:
        """(role, name, issued) of every credential."""
        with store.transaction() as tx:
            return [(r.role, r.name, int(r.created)) for r in records.credentials(tx)]

    def revoke_credential(self, store: Store, role: str, name: str) -> None:
        """Delete a credential's hash: its token calls nothing any more, and the sessions opened
        with it fail their next check. Written to the audit log."""
        with store.transaction() as tx:
            if not records.remove_credential(tx, role, name):
                raise StateError(f"no {role} credential {name!r}", hint="vhw server credential ls")
            tx.audit(int(time.time()), "operator", [("revoke-credential", f"{role}:{name}", {})])

    def add_credential(self, store: Store, role: str, name: str, out: Path | None = None) -> Credential:
        cert, key = pki.issue(self.ca_der(), self.ca_key(), f"vhw {role} {name}", client=True)
        cred = Credential(
            role,
            name,
            secrets.token_urlsafe(32),
            self.config().url,
            self.path("ca.pem").read_text(),
            pki.cert_pem(cert).decode(),
            pki.key_pem(key).decode(),
            pki.cert_pem(self.signing_der()).decode(),
        )
        with store.transaction() as tx:
            records.add_credential(tx, cred.token_hash, role, name, int(time.time()))
            tx.audit(int(time.time()), "operator", [("add-credential", f"{role}:{name}", {})])
        atomic_write(out or self.credential_path(role), cred.to_json(), mode=0o600)
        return cred

    # -- loading --------------------------------------------------------------------------------

    def require(self) -> None:
        if not self.exists:
            raise StateError(f"{self.root}: no server home here", hint="run `vhw server init` first")

    def config(self) -> ServerConfig:
        self.require()
        path = self.path("config.json")
        return ServerConfig.from_json(path.read_bytes(), path)

    def master_key(self) -> bytes:
        path = self.path("master.key")
        try:
            key = bytes.fromhex(path.read_text().strip())
        except OSError as exc:
            raise FileError(path, f"cannot read master key: {describe_os_error(exc)}") from None
        except ValueError:
            key = b""
        if len(key) != 32:
            raise FileError(path, "not a master key (32 bytes, hex)")
        return key

    def ca_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.path("ca.pem").read_bytes()).public_bytes(serialization.Encoding.DER)

    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.path("ca-key.pem").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FileError(self.path("ca-key.pem"), "not the platform CA's key (ECDSA)")
        return key

    def database_url(self, override: str | None = None) -> str:
        return override or self.config().database or f"sqlite:///{self.path('vhw.db')}"

    def store(self, database: str | None = None, *, statement_timeout: float | None = None) -> Store:
        return open_store(self.database_url(database), statement_timeout=statement_timeout)

    def _make_signing_key(self, ca_der: bytes, ca_key: ec.EllipticCurvePrivateKey) -> None:
        cert_der, key = pki.issue_signer(ca_der, ca_key, "vhw platform signing key")
        atomic_write(self.path("signing-key.pem"), pki.key_pem(key), mode=0o600)
        atomic_write(self.path("signing.pem"), pki.cert_pem(cert_der))

    def signing_der(self) -> bytes:
        """The platform's signing certificate (DER): card tokens and audit heads verify with it.
        A home made before it existed gets one on first use, from its CA."""
        if not self.path("signing.pem").exists():
            self._make_signing_key(self.ca_der(), self.ca_key())
        return x509.load_pem_x509_certificate(self.path("signing.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    def signer(self) -> crypto.Signer:
        """Signs card tokens and audit heads with the platform's signing key (ECDSA P-256,
        SHA-256): not the CA's, which signs certificates only."""
        self.signing_der()
        return crypto.ecdsa_signer(self.path("signing-key.pem").read_bytes())

    def licensing(self, store: Store) -> Licensing:
        cfg = self.config()
        policy = Policy(frozenset(cfg.identify_by), cfg.attempt_limit, cfg.attempt_window)
        return Licensing(store, self.master_key(), policy, sign=self.signer())

    # -- running, and the operator's maintenance -----------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Held (shared) by every server process for as long as it serves: maintenance that must
        not meet a live server (rotation, restore) takes it exclusively, or refuses."""
        fd = os.open(self.path("run.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def stopped(self, doing: str) -> Iterator[None]:
        """No server serves from this home for as long as the block runs, or StateError."""
        fd = os.open(self.path("run.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"{self.root}: a server is running from this home; stop it before {doing}") from None
            yield
        finally:
            os.close(fd)

    def chainer(self, store: Store) -> Chainer:
        return Chainer(store, self.signer(), self.path("audit-heads.jsonl"))

    def check_signature(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is the platform signing key's over ``message`` (signed audit
        heads; heads signed before the home had a signing key verify with the CA's)."""
        for der in (self.signing_der(), self.ca_der()):
            try:
                crypto.ecdsa_verify(der, signature, message)
                return True
            except crypto.Invalid:
                continue
        return False

    # -- the master key ---------------------------------------------------------------------------

    def check_master_key(self, store: Store) -> None:
        """At start: the keys at rest are under ``master.key``. Finishes a rotation that committed
        before it was killed (``master.key.new`` is the database's key), drops one that did not."""
        pending = self.path("master.key.new")
        with store.transaction() as tx:
            recorded = records.master_fingerprint(tx)
            if recorded is None:  # a new database, or one from before rotations: it is this key's
                recorded = key_fingerprint(self.master_key())
                records.note_master_fingerprint(tx, recorded)
        if pending.exists():
            new = _read_key(pending)
            if new and crypto_equal(key_fingerprint(new), recorded):
                os.replace(pending, self.path("master.key"))  # the rotation committed: finish it
                fsync_dir(self.root)
                log.warning("finished a master key rotation that was interrupted after its commit")
            else:
                pending.unlink()
                log.warning("dropped a master key rotation that was interrupted before its commit")
        if not crypto_equal(key_fingerprint(self.master_key()), recorded):
            raise StateError(
                f"{self.path('master.key')} is not the key the database's keys are encrypted under",
                hint="restore the master.key that belongs to this database",
            )

    def rotate_master_key(self, store: Store) -> int:
        """Re-encrypt every key at rest under a new master key in one transaction; the old key is
        then gone. Returns how many keys were re-encrypted. See :meth:`check_master_key` for a
        rotation killed half way."""
        self.check_master_key(store)
        old = self.master_key()
        new = secrets.token_bytes(32)
        pending = self.path("master.key.new")
        atomic_write(pending, new.hex().encode() + b"\n", mode=0o600)  # 1: the new key, durably
        count = 0
        with store.transaction() as tx:  # 2: every key and the fingerprint, or nothing
            for table, _, _ in records.AT_REST:
                updates = []
                for row_id, blob in records.sealed_keys(tx, table):
                    ad = bindings.at_rest(table, row_id)
                    updates.append((crypto.wrap(new, crypto.unwrap(old, blob, ad), ad), row_id))
                records.reseal_keys(tx, table, updates)
                count += len(updates)
            records.note_master_fingerprint(tx, key_fingerprint(new))
        os.replace(pending, self.path("master.key"))  # 3: the old key is gone
        fsync_dir(self.root)
        return count


# What a home holds besides its database: the files a restore on a new machine needs, and those
# it takes when they are there (the signed audit heads; a home made before the signing key)
KEPT_FILES = ("config.json", "master.key", "ca.pem", "ca-key.pem", "server.pem", "server-key.pem")
OPTIONAL_FILES = ("signing.pem", "signing-key.pem", "audit-heads.jsonl")


# Every key the database keeps, encrypted under the master key: (table, column, row ID column)
def key_fingerprint(key: bytes) -> bytes:
    """What the database records of its master key: a fingerprint that reveals nothing of it."""
    return crypto.derive(key, crypto.context("master-key-fingerprint"), length=16)


def _read_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) == 32 else None


# -- backups -------------------------------------------------------------------------------------------

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
            src = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
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
    if fingerprint is not None and not crypto_equal(fingerprint, key_fingerprint(home.master_key())):
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
    try:
        with open(source, "rb") as f:
            magic = f.read(16)
    except OSError as exc:
        raise FileError(source, f"cannot read the backup: {describe_os_error(exc)}") from None
    with home.stopped("restoring its database"):
        if url.startswith("sqlite:///"):
            if not magic.startswith(SQLITE_MAGIC):
                raise FileError(source, "not a backup of a SQLite database (`vhw server backup` of one)")
            target = Path(url.removeprefix("sqlite:///"))
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
        else:
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
        store = home.store(database)
        try:
            store.migrate()
            home.check_master_key(store)
            with store.transaction() as tx:
                reached = records.last_position(tx) or 0
                # the restore itself is part of the history (chained when the server next runs)
                tx.audit(
                    int(time.time()),
                    "operator:restore",
                    [("restore-database", source.name, {"chain_position": reached})],
                )
        finally:
            store.close()
        heads_path = home.path("audit-heads.jsonl")
        kept = [h for h in read_heads(heads_path) if h.position <= reached]
        atomic_write(heads_path, "".join(h.to_line() for h in kept).encode(), mode=0o600)
        return reached
