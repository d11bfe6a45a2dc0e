"""A person's first steps: every mistake gets its own line and its documented exit code.

Through the CLI, as a new user or operator meets them: several discs at once, a mistyped ID, a
plain-HTTP server address, a master image in the tray, one card in two slots, a busy or foreign
address to listen on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from vhw.errors import IdError, InputError, StateError

from .conftest import make_title
from .servers import RunningServer, factory, publish


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("firstday") / "home")
    yield server
    server.stop()


def one_line(r) -> str:
    assert r.err.count("\n") == 1 and "Traceback" not in r.err and "internal error" not in r.err, r
    return r.err


def test_disc_info_and_verify_take_several_discs(cli, srv, tmp_path):
    discs = publish(cli, srv, make_title(tmp_path / "src"), tmp_path, "MANY-1", count=3)
    r = cli("disc", "info", *discs)
    assert r.code == 0 and r.out.count("disc image") == 3, r
    r = cli("disc", "info", "--json", *discs)
    assert r.code == 0 and len(json.loads(r.out)["discs"]) == 3
    r = cli("disc", "verify", *discs)
    assert r.code == 0 and r.out.count(": OK") == 3, r
    broken = tmp_path / "broken.disc"
    broken.write_bytes(discs[0].read_bytes()[:5000])
    r = cli("disc", "verify", discs[1], broken)
    assert r.code == 3 and str(broken) in one_line(r)


def test_a_mistyped_id_has_the_id_exit_code(cli, srv, tmp_path):
    op = ["--credential", srv.credential("operator"), "--server", srv.url]
    for wrong in ("US-XXXX-XXXX-XXXX-XXXX-X", "MC-0000-0001-ADMQ-P", "US-12"):
        r = cli("repair", "card", "--user-id", wrong, "-o", tmp_path / "new.card", *op)
        assert r.code == IdError.exit_code, r
        assert "user_id" in one_line(r) or "User ID" in r.err
    assert not (tmp_path / "new.card").exists()


def test_console_slips(cli, srv, tmp_path):
    dev = factory(cli, srv, tmp_path / "dev")
    r = cli(
        "console",
        "setup",
        tmp_path / "plain",
        "--rom",
        dev["rom"],
        "--hdd",
        dev["hdd"],
        "--server",
        "http://127.0.0.1:8443",
    )
    assert r.code == InputError.exit_code and "https://" in one_line(r)
    assert not (tmp_path / "plain" / "console.json").exists()
    con = ["--console", dev["console"]]
    r = cli("console", "insert-card", dev["card"], "--slot", "2", *con)  # it sits in slot 1 already
    assert r.code == StateError.exit_code and "slot 1 already" in one_line(r)
    master = tmp_path / "m.master"
    assert cli("disc", "master", make_title(tmp_path / "msrc"), "-o", master, "--title-id", "MASTER-1").code == 0
    r = cli("console", "insert-disc", master, *con)
    assert r.code == StateError.exit_code and "master image" in one_line(r)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_or_foreign_address_is_one_line(srv, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    home = ["--home", str(srv.home.root)]
    cases = [
        (["server", "run", *home, "--listen", f"127.0.0.1:{port}"], f"127.0.0.1:{port}: address in use"),
        (["server", "run", *home, "--listen", f"127.0.0.1:{port}", "--workers", "2"], "address in use"),
        (["server", "run", *home, "--listen", "10.255.255.1:8443"], "no such address"),
        (
            ["server", "run", *home, "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{port}"],
            f"127.0.0.1:{port}: address in use",
        ),
    ]
    try:
        for argv, said in cases:
            r = subprocess.run([sys.executable, "-m", "vhw", *argv], capture_output=True, text=True, timeout=60)
            assert r.returncode == StateError.exit_code, (argv, r.stderr)
            assert r.stderr.count("\n") == 1 and "cannot listen on" in r.stderr and said in r.stderr, r.stderr
    finally:
        busy.close()
