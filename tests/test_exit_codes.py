"""The exit-code table (README, `vhw --help`, vhw.errors.EXIT_CODES) is the program's: each kind of
failure it lists, driven through the real `vhw` executable, ends with that code and one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from vhw.errors import EXIT_CODES, FileError, InputError, InUseError, NetworkError, NoSpaceError

from .conftest import make_title
from .servers import RunningServer, cluster_tool, factory, publish

TABLE = dict(EXIT_CODES)


def vhw(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vhw", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VHW_RETRY_SECONDS": "1", **(env or {})},
    )


def master(tmp_path: Path, title_id: str, *args: object) -> subprocess.CompletedProcess:
    """`vhw disc master` of a small title into tmp_path/t.master."""
    src = make_title(tmp_path / "src")
    return vhw("disc", "master", src, "-o", tmp_path / "t.master", "--title-id", title_id, *args)


def refused(r: subprocess.CompletedProcess, code: int, says: str) -> None:
    assert r.returncode == code, (code, TABLE[code], r.stderr)
    lines = r.stderr.strip().splitlines()
    assert says in lines[-1] and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("codes") / "home")
    yield server
    server.stop()


@contextmanager
def small_disk(where: Path, size: str):
    """A file system of ``size`` (tmpfs: root mounts it), filled but for a little, unmounted after."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]).returncode:
        pytest.fail("cannot mount a small tmpfs: this test needs root (as `make test` and CI run)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)])


def test_a_configuration_error_exits_16(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('listen = "127.0.0.1:0"\nworker = 2\n')
    refused(vhw("server", "run", "--config", config), FileError.exit_code, "unknown key 'worker'")
    refused(vhw("server", "run", "--config", tmp_path / "missing.toml"), FileError.exit_code, "missing.toml")


def test_a_damaged_file_of_the_server_home_exits_16_naming_it(cli, tmp_path):
    """Each of the home's certificates and keys, damaged (half of it, or other bytes), is named in
    one line by every command that reads it, exit 16, instead of cryptography's error as an
    internal one; a damaged SQLite database too, by `server backup`, which leaves no file. The
    control: the same commands on the home as it was succeed."""
    import shutil

    pristine = tmp_path / "pristine"
    assert cli("server", "init", "--home", pristine, "--listen", "127.0.0.1:0").code == 0
    home = tmp_path / "home"

    def commands(n):
        return [
            ("server", "renew-cert", "--home", home),
            ("server", "issue-cert", "b", "-o", tmp_path / f"tls{n}", "--home", home),
            ("server", "credential", "add", "publisher", f"p{n}", "-o", tmp_path / f"p{n}.json", "--home", home),
            ("server", "ca-rollover", "begin", "--home", home),
        ]

    shutil.copytree(pristine, home)
    for args in commands(0):
        assert cli(*args).code == 0, args
    n = 0
    for name in ("ca.pem", "ca-key.pem", "server.pem", "signing.pem", "signing-key.pem"):
        for damage in ("half", "other"):
            shutil.rmtree(home)
            shutil.copytree(pristine, home)
            data = (home / name).read_bytes()
            (home / name).write_bytes(data[: len(data) // 2] if damage == "half" else b"not a PEM file\n")
            said = []
            for args in commands(n := n + 1):
                r = cli(*args)
                assert "internal error" not in r.err and r.err.count("\n") <= 1, (name, args, r.err)
                if r.code:
                    assert r.code == FileError.exit_code and f"{name}: damaged" in r.err, (name, args, r.err)
                    said.append(args[1])
            if name == "signing-key.pem":  # (read only by the server itself: it stops at once)
                r = subprocess.run(
                    [sys.executable, "-m", "vhw", "server", "run", "--home", home],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                refused(r, FileError.exit_code, f"{name}: damaged")
                said.append("run")
            assert said, name  # (every file is read by one of them at least)
    shutil.rmtree(home)
    shutil.copytree(pristine, home)
    (home / "vhw.db").write_bytes(os.urandom(8192))
    r = cli("server", "backup", tmp_path / "b.bak", "--home", home)
    assert r.code == FileError.exit_code and "cannot back up the database" in r.err
    assert not (tmp_path / "b.bak").exists() and not list(tmp_path.glob(".b.bak*"))


def test_a_busy_port_exits_7_and_an_address_not_allowed_17(srv, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = vhw("server", "run", "--home", srv.home.root, "--listen", f"127.0.0.1:{port}")
        refused(r, InUseError.exit_code, "address in use")
    r = vhw("server", "run", "--home", srv.home.root, "--listen", "10.255.255.1:8443")
    refused(r, InputError.exit_code, "no such address")


def test_a_credential_of_another_role_exits_16(srv, tmp_path):
    r = master(tmp_path, "ROLE-1", "--credential", srv.credential("manufacturer"))
    refused(r, FileError.exit_code, "is a manufacturer credential; this needs the publisher's")
    assert not (tmp_path / "t.master").exists()


def test_an_unreachable_database_exits_5(tmp_path):
    port = cluster_tool().free_ports(1)
    r = vhw("server", "init", "--home", tmp_path / "home", "--db", f"postgresql://vhw@127.0.0.1:{port}/vhw")
    refused(r, NetworkError.exit_code, "cannot connect to PostgreSQL")
    assert "waiting up to" in r.stderr.splitlines()[0]  # (said within a second of trying)


def test_an_unreachable_server_exits_5(srv, tmp_path):
    port = cluster_tool().free_ports(1)
    r = master(tmp_path, "GONE-1", "--credential", srv.credential("publisher"), "--server", f"https://127.0.0.1:{port}")
    refused(r, NetworkError.exit_code, "cannot reach")


def test_server_wait_says_at_once_what_it_waits_for_then_exits_5(tmp_path):
    """A wait is never without a word: the first line comes before the wait, the last says why."""
    home = tmp_path / "home"
    port = cluster_tool().free_ports(1)
    assert vhw("server", "init", "--home", home, "--listen", f"127.0.0.1:{port}").returncode == 0
    r = vhw("server", "wait", "--home", home, "--timeout", "1")
    refused(r, NetworkError.exit_code, "cannot reach")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"waiting up to 1 s for https://127.0.0.1:{port} to answer"), lines


def test_a_full_host_disk_exits_8(tmp_path):
    with small_disk(tmp_path / "small", "1m") as small:
        (small / "filler").write_bytes(b"\0" * (1024 * 1024 - 8192))
        r = vhw("card", "format", small / "c.card", "--size", "64KiB")
        refused(r, NoSpaceError.exit_code, "the disk that holds it is full")
        assert [p.name for p in small.iterdir()] == ["filler"]  # no half-written file


def test_an_install_checks_the_host_disk_first_and_says_how_much_it_needs(srv, tmp_path):
    """A 40 MB title onto an HDD image on a disk with ~10 MB free: refused before the server is
    asked (no MID flagged, nothing written), naming what is free and what it needs."""
    src = make_title(tmp_path / "src", big=40_000_000)
    [disc] = publish(lambda *a: _cli(*a), srv, src, tmp_path, "ROOM-1")
    with small_disk(tmp_path / "small", "12m") as small:
        man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
        dev = factory(lambda *a: _cli(*a), srv, tmp_path / "dev")
        hdd = small / "h.hdd"
        assert vhw("hdd", "format", hdd, "--size", "200M", *man).returncode == 0
        assert vhw("console", "replace", "--hdd", hdd, "--console", dev["console"]).returncode == 0
        assert vhw("console", "register", "--console", dev["console"]).returncode == 0
        assert vhw("console", "insert-disc", disc, "--console", dev["console"]).returncode == 0
        before = hdd.read_bytes()
        r = vhw("console", "install", "--console", dev["console"])
        refused(r, NoSpaceError.exit_code, "installing ROOM-1 needs 4")
        assert "MB free" in r.stderr and "df" in r.stderr
        assert hdd.read_bytes() == before
    info = json.loads(vhw("card", "info", dev["card"], "--json").stdout)
    assert info["licenses"] == []  # the server was not asked: no key fetched, no MID flagged


def _cli(*args: object):
    from .conftest import Result

    r = vhw(*args)
    return Result(r.returncode, r.stdout, r.stderr)


def test_a_path_too_long_for_the_system_exits_17_in_one_line_and_writes_nothing(tmp_path):
    """A name over the system's 255 bytes, or a whole path over its 4,095, given as an argument,
    an option or a home in the environment: one line that says so (the path shortened), not an
    internal error, and nothing written."""
    long_name = tmp_path / ("n" * 300)
    long_path = tmp_path.joinpath(*["d" * 200] * 25)
    for args, env in (
        (("card", "format", long_name), None),
        (("hdd", "format", long_path / "x.hdd", "--size", "16M"), None),
        (("server", "init", "--home", long_name), None),
        (("server", "audit", "--home", long_path), None),
        (("broker", "ledger", "--home", long_name), None),
        (("server", "credential", "ls"), {"VHW_HOME": str(long_name)}),
    ):
        r = vhw(*args, env=env)
        refused(r, 17, "a path is too long: ")
        assert len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 300, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_path_the_system_refuses_exits_17_in_one_line_and_writes_nothing(tmp_path):
    """An output through a file (``FILE/x``), a home below one, a folder where the file is meant:
    one line naming the path and why, not an internal error; and nothing written."""
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    for args, says in (
        (("card", "format", a_file / "x.card"), "a part of it is a file, not a folder"),
        (("hdd", "format", a_file / "x.hdd", "--size", "16M"), "a part of it is a file, not a folder"),
        (("server", "openapi", "-o", a_file / "openapi.json"), "a part of it is a file, not a folder"),
        (("server", "init", "--home", a_file / "home"), "a file is in the way of a folder"),
        (("server", "openapi", "-o", ""), "a folder, where a file is meant"),  # (the current folder)
    ):
        r = vhw(*args)
        refused(r, 17, says)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == [a_file] and a_file.read_bytes() == b"x"
    r = vhw("server", "issue-cert", "", "-o", tmp_path / "tls")  # (a certificate's name: 1-64 characters)
    assert r.returncode == 2 and "is not a name for a certificate" in r.stderr
