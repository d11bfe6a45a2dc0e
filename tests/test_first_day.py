"""A person's first steps: every mistake gets its own line and its documented exit code.

Through the CLI, as a new user or operator meets them: several discs at once, a mistyped ID, a
plain-HTTP server address, a master image in the tray, one card in two slots, a busy or foreign
address to listen on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from vhw.errors import IdError, InputError, StateError

from .conftest import MEDIA, make_title
from .servers import RunningServer, cluster_tool, factory, publish


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
    """A port free now, below the ephemeral range: no outgoing connection takes it before the server binds it."""
    return cluster_tool().free_ports(1)


def test_a_busy_or_foreign_address_is_one_line(srv, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    home = ["--home", str(srv.home.root)]
    cases = [
        (["server", "run", *home, "--listen", f"127.0.0.1:{port}"], f"127.0.0.1:{port}: address in use", 7),
        (["server", "run", *home, "--listen", f"127.0.0.1:{port}", "--workers", "2"], "address in use", 7),
        (["server", "run", *home, "--listen", "10.255.255.1:8443"], "no such address", 17),
        (
            ["server", "run", *home, "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{port}"],
            f"127.0.0.1:{port}: address in use",
            7,
        ),
    ]
    try:
        for argv, said, code in cases:
            r = subprocess.run([sys.executable, "-m", "vhw", *argv], capture_output=True, text=True, timeout=60)
            assert r.returncode == code, (argv, r.stderr)
            assert r.stderr.count("\n") == 1 and "cannot listen on" in r.stderr and said in r.stderr, r.stderr
    finally:
        busy.close()


def test_web_console_paths_keep_user_ids_out_of_the_log():
    from vhw.httpapi import loggable as _loggable

    assert _loggable("/console/user/US-8AH7-92FE-NTW6-AQ60-2") == "/console/user/(user)"
    assert _loggable("/console/user/us-8ah7-92fe-ntw6-aq60-2/repair") == "/console/user/(user)/repair"
    assert _loggable("/console/card/secret-token") == "/console/card/(token)"
    assert _loggable("/console/reissued/secret-token") == "/console/reissued/(token)"
    assert _loggable("/v1/console/acquire") == "/v1/console/acquire"


def test_backups_are_the_owners_alone(srv, tmp_path):
    import stat

    out = tmp_path / "b.backup"
    r = subprocess.run(
        [sys.executable, "-m", "vhw", "server", "backup", str(out), "--home", str(srv.home.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_server_audit_reads_well(cli, srv, tmp_path):
    """Local ISO times, aligned columns under a header, and --json details as objects."""
    publish(cli, srv, make_title(tmp_path / "src"), tmp_path, "AUDIT-READ-1")
    r = cli("server", "audit", "--home", srv.home.root)
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split()[:5] == ["seq", "time", "actor", "action", "subject"]
    column = lines[0].index("actor")
    assert all(line[column - 2 : column] == "  " for line in lines[1:])  # the time column never runs into the next
    entries = json.loads(cli("server", "audit", "--home", srv.home.root, "--json").out)["entries"]
    assert entries and all(isinstance(e["detail"], dict) for e in entries)
    assert all("T" in e["time"] and e["time"][-6] in "+-" for e in entries)


def test_server_init_takes_the_public_name(tmp_path):
    """`server init --url` puts the name in the certificate and every credential; listening on
    every address, the default is this host's name, never https://0.0.0.0."""
    import socket as socketlib

    from cryptography import x509

    from vhw.server.credentials import Credential
    from vhw.server.home import ServerHome

    def names(home: ServerHome) -> set[str]:
        cert = x509.load_pem_x509_certificate(home.path("server.pem").read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {str(n.value) for n in alt}

    named = ServerHome.init(tmp_path / "named", listen="0.0.0.0:8443", url="licensing.example.net")
    assert "licensing.example.net" in names(named)
    for cred in named.path("credentials").glob("*.json"):
        assert Credential.load(cred).server == "https://licensing.example.net:8443"
    anywhere = ServerHome.init(tmp_path / "anywhere", listen="0.0.0.0:9443")
    assert anywhere.config().url == f"https://{socketlib.gethostname()}:9443"
    assert socketlib.gethostname() in names(anywhere)
    with pytest.raises(InputError):
        ServerHome.init(tmp_path / "plain", url="http://licensing.example.net")


def test_a_name_mismatch_is_called_one(tmp_path):
    """A URL whose host the certificate does not name (a server on every address, reached as
    127.0.0.2): said so, naming the host, not "not signed by the platform CA"."""
    from vhw import protocol as p
    from vhw.client import Client, tls_context
    from vhw.errors import NetworkError

    everywhere = RunningServer.start(tmp_path / "home", listen="0.0.0.0:0")
    try:
        port = everywhere.url.rsplit(":", 1)[1].strip("/")
        with (
            Client(f"https://127.0.0.2:{port}", tls_context(everywhere.ca_der)) as c,
            pytest.raises(NetworkError) as err,
        ):
            c.get("/v1/health", p.Health)
        assert "does not name 127.0.0.2" in str(err.value), err.value
        with Client(f"https://127.0.0.1:{port}", tls_context(everywhere.ca_der)) as c:
            assert c.get("/v1/health", p.Health).status == "ok"
    finally:
        everywhere.stop()


def test_hdd_rm_asks_first(cli, srv, tmp_path):
    [disc] = publish(cli, srv, make_title(tmp_path / "src"), tmp_path, "RM-1")
    dev = factory(cli, srv, tmp_path / "dev")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "install", *con).code == 0
    r = cli("hdd", "rm", "RM-1", *con)  # no terminal to ask: refused, nothing removed
    assert r.code == InputError.exit_code and "--yes" in one_line(r)
    assert "RM-1" in cli("hdd", "ls", *con).out
    assert cli("hdd", "rm", "RM-1", "--yes", *con).code == 0
    assert "RM-1" not in cli("hdd", "ls", *con).out


def test_installing_while_mounted_says_unmount_first(cli, srv, tmp_path):
    from vhw.console.machine import Machine

    [first] = publish(cli, srv, make_title(tmp_path / "src"), tmp_path, "MOUNTED-1")
    [disc] = publish(cli, srv, make_title(tmp_path / "src2", seed=2), tmp_path, "MOUNTED-2")
    dev = factory(cli, srv, tmp_path / "dev")
    con = ["--console", dev["console"]]
    assert cli("console", "register", *con).code == 0
    assert cli("console", "insert-disc", first, *con).code == 0
    assert cli("console", "install", *con).code == 0
    assert cli("console", "eject-disc", *con).code == 0
    m = Machine(dev["console"])
    where = tmp_path / "mnt"
    where.mkdir()
    m.mount(where)
    try:
        assert cli("console", "insert-disc", disc, *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == StateError.exit_code and "unmount it first" in one_line(r)
    finally:
        m.unmount(where)
    assert cli("console", "install", *con).code == 0


def test_mount_slips(cli, srv, tmp_path):
    """A second mount of the same HDD names where it is mounted; a folder with files is refused
    unless --nonempty; unmounting what is not mounted says so."""
    [disc] = publish(cli, srv, make_title(tmp_path / "src"), tmp_path, "MNT-1")
    dev = factory(cli, srv, tmp_path / "dev")
    con = ["--console", dev["console"]]
    for step in (("console", "register"), ("console", "insert-disc", disc), ("console", "install")):
        assert cli(*step, *con).code == 0
    full = tmp_path / "full"
    full.mkdir()
    (full / "note.txt").write_text("mine")
    r = cli("console", "mount", full, *con)
    assert r.code == StateError.exit_code and "not empty" in one_line(r) and "--nonempty" in r.err
    first = tmp_path / "first"
    first.mkdir()
    assert cli("console", "mount", first, *con).code == 0
    try:
        second = tmp_path / "second"
        second.mkdir()
        r = cli("console", "mount", second, *con)
        assert r.code == StateError.exit_code and f"mounted at {first}" in one_line(r)
    finally:
        assert cli("console", "unmount", first, *con).code == 0
    r = cli("console", "unmount", first, *con)
    assert r.code == StateError.exit_code and "not mounted" in one_line(r)
    assert cli("console", "mount", full, "--nonempty", *con).code == 0
    assert cli("console", "unmount", full, *con).code == 0
    assert (full / "note.txt").read_text() == "mine"


def test_after_a_repair_the_console_folder_takes_the_new_rom(cli, srv, tmp_path):
    """`vhw console replace --rom NEW` after an exchange: the old titles say to install again
    from the disc (CONTENT REPRODUCTION IS NOT PERMITTED and the hint), the install does, it plays."""
    from .conftest import PLAY

    src = tmp_path / "game"
    src.mkdir()
    (src / "main.py").write_text("print('ok')\n")
    (src / "vhw-title.json").write_text('{"name": "R", "kind": "game", "entry": "main.py"}')
    [disc] = publish(cli, srv, src, tmp_path, "REPAIRED-1")
    dev = factory(cli, srv, tmp_path / "dev")
    con = ["--console", dev["console"]]
    for step in (("console", "register"), ("console", "insert-disc", disc), ("console", "install")):
        assert cli(*step, *con).code == 0
    assert cli("console", "play", *con, "REPAIRED-1").code == 0
    man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    op = ["--credential", srv.credential("operator"), "--server", srv.url]
    new_rom = tmp_path / "new.rom"
    assert cli("console", "rom", new_rom, *man).code == 0
    assert cli("repair", "device", "--card", dev["card"], "--new-rom", new_rom, *op).code == 0
    r = cli("console", "replace", "--rom", new_rom, *con)
    assert r.code == 0, r
    r = cli("console", "play", *con, "REPAIRED-1")
    assert r.code == 14, r
    assert r.err.startswith(PLAY) and "install the titles again from their discs" in r.err
    assert cli("console", "install", *con).code == 0
    assert cli("console", "play", *con, "REPAIRED-1").code == 0


def test_server_init_against_an_unreachable_database(tmp_path):
    """Within 5 s, two lines (what it waits for, then why it gave up: exit 5), the URL shown without
    a password it does not have, no home left."""
    import time

    port = free_port()  # nothing listens there
    start = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vhw",
            "server",
            "init",
            "--home",
            str(tmp_path / "home"),
            "--db",
            f"postgresql://vhw@127.0.0.1:{port}/vhw",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - start
    waiting, refused = r.stderr.splitlines()  # what it waits for (said within a second), then why it gave up
    assert "waiting up to 5 s for PostgreSQL" in waiting, r.stderr
    assert r.returncode == 5 and "cannot connect to PostgreSQL" in refused, r.stderr
    assert f"postgresql://vhw@127.0.0.1:{port}/vhw" in r.stderr and ":***" not in r.stderr
    assert took < 8  # (5 s of waiting, plus start-up)
    assert not (tmp_path / "home").exists() and not list(tmp_path.iterdir())


def test_hdd_ls_has_a_header_and_columns_that_never_meet():
    from vhw.cli.hdd import title_table

    titles = [
        {
            "title_id": "A-VERY-LONG-TITLE-ID-OF-32-CHARS",
            "size": 123_456_789_012,
            "kind": "application",
            "state": "interrupted at 12%",
            "name": "x",
        },
        {"title_id": "G-1", "size": 5, "kind": "game", "state": "complete", "name": "Cave"},
    ]
    import re

    lines = title_table(titles)
    assert lines[0].split() == ["title", "size", "kind", "state", "name"]
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[1:]] == [
        ["A-VERY-LONG-TITLE-ID-OF-32-CHARS", "123.5 GB", "application", "interrupted at 12%", "x"],
        ["G-1", "5 B", "game", "complete", "Cave"],
    ]
    kind = lines[0].index("kind")
    assert all(line[kind - 2 : kind] == "  " and line[kind] != " " for line in lines)


def test_restore_on_a_new_machine_serves_the_old_consoles(cli, tmp_path):
    """The README's restore: a backup, a copy of the old home's folder, the old machine gone; the
    home made from the copy with `restore --from-home` serves the old consoles: what was
    installed plays, a new disc installs, and a disc flagged before the backup stays flagged."""
    import shutil

    old = RunningServer.start(tmp_path / "old")
    port = old.url.rsplit(":", 1)[1]

    def game(n: int):
        src = tmp_path / f"src{n}"
        src.mkdir()
        (src / "main.py").write_text(f"print('game {n}')\n")
        (src / "vhw-title.json").write_text(f'{{"name": "G{n}", "kind": "game", "entry": "main.py"}}')
        return publish(cli, old, src, tmp_path, f"RESTORED-{n}", count=2)

    first, second = game(1), game(2)
    dev = factory(cli, old, tmp_path / "dev")
    con = ["--console", dev["console"]]
    for step in (("console", "register"), ("console", "insert-disc", first[0]), ("console", "install")):
        assert cli(*step, *con).code == 0
    backup = tmp_path / "vhw.backup"
    assert cli("server", "backup", backup, "--home", old.home.root).code == 0
    assert old.stop() == 0
    kept = tmp_path / "kept"  # what the operator kept apart from the backups
    shutil.copytree(old.home.root, kept)
    shutil.rmtree(old.home.root)  # the old machine is gone

    new = tmp_path / "new"
    r = cli("server", "restore", backup, "--home", new, "--from-home", tmp_path / "nothing")
    assert r.code != 0 and "no server home" in one_line(r) and not new.exists()
    r = cli("server", "restore", backup, "--home", new, "--from-home", kept)
    assert r.code == 0, r
    assert oct(new.joinpath("master.key").stat().st_mode & 0o777) == "0o600"
    r = cli("server", "restore", backup, "--home", new, "--from-home", kept)
    assert r.code == 9 and "already here" in one_line(r)
    srv = RunningServer.start(new, listen=f"127.0.0.1:{port}")  # (the new machine takes the old address)
    try:
        assert cli("console", "play", *con, "RESTORED-1").code == 0
        assert cli("console", "eject-disc", *con).code == 0
        assert cli("console", "insert-disc", second[0], *con).code == 0
        assert cli("console", "install", *con).code == 0, "a new disc installs against the restored server"
        assert cli("console", "play", *con, "RESTORED-2").code == 0
        other = factory(cli, srv, tmp_path / "other")
        oc = ["--console", other["console"]]
        assert cli("console", "register", *oc).code == 0
        assert cli("console", "insert-disc", first[0], *oc).code == 0
        r = cli("console", "install", *oc)
        assert r.code != 0 and r.err.startswith(MEDIA), r
    finally:
        srv.stop()


def test_console_account_needs_a_broker(cli, srv, tmp_path):
    """A console whose server is a licensing server in direct mode has no broker to sign in to:
    one line that says so, and no account file."""
    dev = factory(cli, srv, tmp_path / "dev")
    r = cli("console", "account", "carol", "--password", "carol-secret-pw", "--console", dev["console"])
    assert r.code == 9 and "is not a broker" in one_line(r), r
    assert not (dev["console"] / "account.json").exists()


def test_master_checks_the_credential_and_server_first(cli, srv, tmp_path, monkeypatch):
    """A wrong credential or an unreachable server: said before anything is written (after the
    client's retries, said once). A token the server refuses (known only at registration): the
    master is kept, and the line says how to register it later, which then works."""
    monkeypatch.setenv("VHW_RETRY_SECONDS", "1")
    src = make_title(tmp_path / "src")
    out = tmp_path / "t.master"
    master = ["disc", "master", src, "-o", out, "--title-id", "LATER-1"]
    r = cli(*master, "--credential", srv.credential("manufacturer"))
    assert r.code == 16 and "manufacturer credential" in one_line(r) and not out.exists()
    r = cli(*master, "--credential", srv.credential("publisher"), "--server", f"https://127.0.0.1:{free_port()}")
    assert r.code == 5 and not out.exists(), r
    notice, error = r.err.splitlines()
    assert notice.endswith("unavailable, retrying (for up to 1 s)") and error.startswith("vhw: cannot reach")
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**json.loads(srv.credential("publisher").read_text()), "token": "revoked"}))
    r = cli(*master, "--credential", stale, "--server", srv.url)
    assert r.code == 6 and out.exists() and f"vhw disc register {out}" in one_line(r), r
    r = cli("disc", "register", out, "--credential", srv.credential("publisher"), "--server", srv.url)
    assert r.code == 0 and "registered LATER-1" in r.out, r


def on_a_terminal(*args: object) -> tuple[int, str, str]:
    """`vhw ARGS` with its stderr on a pseudo-terminal (where progress bars show): (code, out, err)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vhw", *map(str, args)], stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    err = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read() if proc.stdout else ""
    code = proc.wait(timeout=300)
    os.close(leader)
    return code, out, err.decode(errors="replace")


def test_master_and_press_show_their_progress_on_a_terminal(srv, tmp_path):
    """On a terminal `disc master` and `disc press` draw a bar (percent, MB, rate); stdout keeps
    only the result lines, so scripts still read it."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    pub = ["--credential", srv.credential("publisher"), "--server", srv.url]
    code, out, err = on_a_terminal("disc", "master", src, "-o", tmp_path / "big.master", "--title-id", "BAR-1", *pub)
    assert code == 0 and "mastering BAR-1" in err and "100%" in err and "MB/s" in err, err
    assert "mastering" not in out and "master " in out
    code, out, err = on_a_terminal("disc", "press", tmp_path / "big.master", "--count", "8", "-o", tmp_path / "d", *pub)
    assert code == 0 and "pressing 8 discs" in err and "100%" in err and "MB/s" in err, err
    assert len(out.splitlines()) == 8 and all("MID MD-" in line for line in out.splitlines())
