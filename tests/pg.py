"""A throwaway PostgreSQL cluster for the tests: Debian's postgresql binaries, a temporary folder,
a free port on 127.0.0.1, stopped (and deleted) afterwards.

``VHW_TEST_POSTGRES_URL`` names an existing server to use instead (a database per test is created
in it). As root, the cluster runs as the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .servers import cluster_tool


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    return None


class Cluster:
    def __init__(self, url: str, stop=None):
        self.url = url.rstrip("/")
        self._stop = stop

    @classmethod
    def start(cls, *, settings: dict[str, str] | None = None) -> Cluster:
        """A throwaway PostgreSQL; ``settings``: more server settings (then never an external one)."""
        external = os.environ.get("VHW_TEST_POSTGRES_URL")
        if external and not settings:
            return cls(external)
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql); tools/setup.sh installs it")
        root = Path(tempfile.mkdtemp(prefix="vhw-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        port = cluster_tool().free_ports(1)  # (below the ephemeral range: no connect takes it first)
        data = root / "data"
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB"
        options += " -c shared_preload_libraries=pg_stat_statements"  # (tools/loadgen.py counts statements)
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        subprocess.run(
            [
                *run_as,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )

        def stop() -> None:
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True
            )
            shutil.rmtree(root, ignore_errors=True)

        return cls(f"postgresql://postgres@127.0.0.1:{port}", stop)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "vhw_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{self.url}/{name}"

    def stop(self) -> None:
        if self._stop:
            self._stop()
            self._stop = None


def dump(url: str) -> bytes:
    """Everything in a database, as ``pg_dump`` writes it (bytea values appear in hex)."""
    bindir = _bindir()
    exe = str(bindir / "pg_dump") if bindir else "pg_dump"
    return subprocess.run([exe, "--no-owner", url], check=True, capture_output=True).stdout
