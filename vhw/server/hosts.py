"""Several licensing hosts of one service: each runs `vhw server run` from a home of its own, all
against one PostgreSQL (a Patroni cluster behind HAProxy, in production).

What every host holds alike: the platform's keys and certificates (the CA, the server's TLS
identity for the service's public name, the signing key), the master key that seals the keys at
rest, the role credentials and the configuration. What each holds alone: its signed audit heads
(``audit-heads.jsonl``: each host's chainer signs the heads it links) and its metrics folder.

* :func:`export_host` writes what a new host needs, from an existing home, into a new folder
  (owner only: it holds the master key and the CA's key): carry it to the new host as such;
* :func:`import_host` makes the new host's home from it, checks that it reaches the database and
  that the database's keys are sealed under its master key.

One audit chain with several writers: the entries of every host go into one table; linking them
takes a PostgreSQL advisory lock, so one chainer at a time extends the one chain, whichever host it
runs on, and each signs the head it reached into its own heads file. ``vhw server audit --verify
--heads OTHER`` checks the chain against the heads of every host. To retire a host: take it out
of the load balancer, stop it, and keep its ``audit-heads.jsonl`` beside the others'.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from ..devices.files import atomic_write, refuse_existing
from ..errors import StateError
from .home import KEPT_FILES, ROLLOVER_FILES, ServerHome

__all__ = ["HOST_FILES", "export_host", "import_host"]


#: What a new host takes from an existing one (besides credentials/).
HOST_FILES = (*KEPT_FILES, "signing.pem", "signing-key.pem")


def export_host(home: ServerHome, out: Path) -> list[str]:
    """Write what another host of this service needs into the new folder ``out``; the files'
    names. Only a home on PostgreSQL has hosts to share it with."""
    home.require()
    if not home.database_url().startswith(("postgresql://", "postgres://")):
        raise StateError(
            f"{home.root}: its database is a SQLite file, which only this host can use",
            hint="hosts share one PostgreSQL database: `vhw server init --db postgresql://...`",
        )
    home.pki.signing_der()  # (a home made before the signing key gets it now: every host has the same)
    out = Path(out)
    refuse_existing(out, "host export")
    out.mkdir(mode=0o700, parents=True)
    rolling = [name for name in ROLLOVER_FILES if home.path(name).exists()]  # (a CA rollover under way)
    for name in (*HOST_FILES, *rolling):
        shutil.copy2(home.path(name), out / name)
    shutil.copytree(home.path("credentials"), out / "credentials")
    for path in out.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return sorted([*HOST_FILES, *rolling, "credentials/"])


def import_host(root: Path, exported: Path, *, listen: str | None = None) -> ServerHome:
    """Make the home of another host of the service at ``root`` from an export; ``listen``: its
    own address to serve on (the public URL, in the certificate and credentials, stays the
    service's). Refused, and nothing left behind, if it cannot reach the database or the
    database's keys are not sealed under the exported master key."""
    home = ServerHome.from_files(root, exported, heads=False)
    try:
        if listen:
            cfg = replace(home.config(), listen=listen)
            atomic_write(home.path("config.json"), json.dumps(asdict(cfg), indent=1).encode())
        store = home.store()
        try:
            store.migrate()
            home.keys.check(store)
        finally:
            store.close()
    except BaseException:
        shutil.rmtree(home.root, ignore_errors=True)
        raise
    return home
