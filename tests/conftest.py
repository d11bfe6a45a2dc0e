"""Shared fixtures: a private VHW_HOME, sample title folders, and a way to run `vhw` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vhw.cli import run

# The patent's notices, as the SPEC words them, with the newline the CLI ends them with. Written out
# here rather than taken from vhw.errors, so the tests pin the exact text.
REGISTER = "USER REGISTRATION CANNOT BE COMPLETED WITH THIS MEMORY CARD\n"
USER = "USER ID INVALID. PLEASE COMPLETE USER REGISTRATION.\n"
MEDIA = "CONTENT CANNOT BE COPIED FROM THIS MEDIA\n"
COPY = "COPY IS NOT PERMITTED\n"
PLAY = "CONTENT REPRODUCTION IS NOT PERMITTED\n"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return f"Result(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture(autouse=True)
def vhw_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "vhw-home"
    monkeypatch.setenv("VHW_HOME", str(home))
    return home


@pytest.fixture
def cli(capsys):
    """Run `vhw ARGS...` in this process; returns its exit code and output."""

    def invoke(*args: object) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def vhw_subprocess(*args: object, env: dict | None = None, timeout: float = 300, **kw) -> Result:
    """Run the real `vhw` executable in a child process (end-to-end tests)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vhw", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        **kw,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def make_title(folder: Path, *, seed: int = 1, big: int = 300_000, kind: str = "game", name: str = "Sample") -> Path:
    """A small title folder: an odd-sized binary, a text file in a subfolder, an empty file."""
    import random

    rnd = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    (folder / "data.bin").write_bytes(rnd.randbytes(big))
    (folder / "sub" / "readme.txt").write_text(f"title seed {seed}\n")
    (folder / "empty").write_bytes(b"")
    (folder / "vhw-title.json").write_text(
        f'{{"name": "{name}", "kind": "{kind}", "entry": "sub/readme.txt", "genre": "test"}}'
    )
    return folder


def file_sha256(path: Path) -> str:
    """SHA-256 of a (possibly large, sparse) file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def source_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "vhw-title.json"
    }


@pytest.fixture
def title_src(tmp_path) -> Path:
    return make_title(tmp_path / "title-src")


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL for the whole run: started when first asked for, stopped at the end."""
    from .pg import Cluster

    cluster = Cluster.start()
    yield cluster
    cluster.stop()


def database_for(request, backend: str) -> str:
    """``--db`` value for a server home on ``backend`` ("" = its SQLite file)."""
    return request.getfixturevalue("postgres").new_database() if backend == "postgres" else ""
