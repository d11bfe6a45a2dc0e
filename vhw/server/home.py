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
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .. import pki
from ..devices.files import atomic_write, fsync_dir
from ..errors import FileError, InputError, StateError
from ..ids import ID_FIELDS
from ..roles import ROLES
from .auditlog import Chainer
from .credentials import Credentials
from .identity import HomePki
from .licensing import Licensing, Policy
from .masterkey import MasterKey
from .store import Store, open_store

__all__ = ["KEPT_FILES", "OPTIONAL_FILES", "ROLLOVER_FILES", "ServerConfig", "ServerHome"]


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


class ServerHome:
    """A server home: its folder, configuration and database; its PKI (:attr:`pki`), master key
    (:attr:`keys`) and credentials (:attr:`credentials`) each have a class of their own."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pki = HomePki(self.root)
        self.keys = MasterKey(self.root)
        self.credentials = Credentials(self.root, self.pki, lambda: self.config().url)

    # -- paths ----------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root / name

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
    def from_files(cls, root: Path, old: Path, *, heads: bool = True) -> ServerHome:
        """A new home at ``root`` made of an old home's keys, certificates, credentials and config
        (a copy of its folder, without or with its database, which is not taken): the home a
        backup is restored into on a new machine, or another host of the same service
        (:mod:`.hosts`: without the old home's signed audit heads, ``heads``). Consoles and
        credentials made for the old home trust it as they trusted the old one."""
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
                if source.path(name).is_file() and (heads or name != "audit-heads.jsonl"):
                    shutil.copy2(source.path(name), staging / name)
            shutil.copytree(source.path("credentials"), staging / "credentials")
            public = {"config.json", "ca.pem", "server.pem", "signing.pem", "ca-next.pem", "ca-next-cross.pem"}
            for path in staging.rglob("*"):
                if path.is_file() and path.name not in public:  # keys, credentials: the owner's alone
                    os.chmod(path, 0o600)

        return cls._staged(root, copy)

    @classmethod
    def _staged(cls, root: Path, build: Callable[[Path], None]) -> ServerHome:
        final = cls(root)
        if final.exists:
            raise StateError(f"{root}: a server home is already here", hint="use it, or choose another --home")
        if os.path.lexists(final.root) and not final.root.is_dir():
            raise FileError(final.root, "is there and is not a folder: not a place for a server home")
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
        home.pki.make_signing_key(ca_der, ca_key)
        atomic_write(home.path("server.pem"), pki.cert_pem(cert_der) + pki.cert_pem(ca_der))
        atomic_write(home.path("server-key.pem"), pki.key_pem(cert_key), mode=0o600)
        atomic_write(home.path("master.key"), secrets.token_bytes(32).hex().encode() + b"\n", mode=0o600)
        atomic_write(home.path("config.json"), json.dumps(asdict(cfg), indent=1).encode())
        store = open_store(home.database_url(), wait=INIT_WAIT)
        try:
            store.migrate()
            for role in ROLES:
                home.credentials.add(store, role, role)
        finally:
            store.close()

    # -- loading --------------------------------------------------------------------------------

    def require(self) -> None:
        if not self.exists:
            raise StateError(f"{self.root}: no server home here", hint="run `vhw server init` first")

    def config(self) -> ServerConfig:
        self.require()
        path = self.path("config.json")
        return ServerConfig.from_json(path.read_bytes(), path)

    def database_url(self, override: str | None = None) -> str:
        return override or self.config().database or f"sqlite:///{self.path('vhw.db')}"

    def store(
        self, database: str | None = None, *, statement_timeout: float | None = None, pool_size: int | None = None
    ) -> Store:
        return open_store(self.database_url(database), statement_timeout=statement_timeout, pool_size=pool_size)

    def licensing(self, store: Store) -> Licensing:
        cfg = self.config()
        policy = Policy(frozenset(cfg.identify_by), cfg.attempt_limit, cfg.attempt_window)
        return Licensing(store, self.keys.read(), policy, sign=self.pki.signer())

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
        return Chainer(store, self.pki.signer(), self.path("audit-heads.jsonl"))


# What a home holds besides its database: the files a restore on a new machine needs, and those
# it takes when they are there (the signed audit heads; a home made before the signing key)
KEPT_FILES = ("config.json", "master.key", "ca.pem", "ca-key.pem", "server.pem", "server-key.pem")
#: A CA rollover under way (vhw.server.identity): the next CA, its key and its cross-certificate.
ROLLOVER_FILES = ("ca-next.pem", "ca-next-key.pem", "ca-next-cross.pem")
OPTIONAL_FILES = ("signing.pem", "signing-key.pem", "audit-heads.jsonl", *ROLLOVER_FILES)


# Every key the database keeps, encrypted under the master key: (table, column, row ID column)
