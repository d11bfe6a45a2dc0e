"""The server as an operator runs it: config file and precedence, /metrics, access logs and the
secrets in them, backup under load and restore, master-key rotation (killed half way), the
tamper-evident audit log on SQLite and PostgreSQL, and the systemd unit."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vhw import bindings, crypto
from vhw import protocol as p
from vhw.cli import run
from vhw.client import tls_context
from vhw.console import decisions
from vhw.devices import card as card_dev
from vhw.devices import rom as rom_dev
from vhw.devices.hdd import HddImage
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.server.credentials import Credential
from vhw.server.home import ServerHome
from vhw.server.records import AT_REST

from .conftest import BACKENDS, MEDIA, REGISTER, database_for
from .servers import RunningServer, cluster_tool, factory, make_users, press, publish

MEDIA_REFUSED = MEDIA.rstrip("\n")


def free_port() -> int:
    """A port free now, below the ephemeral range: no outgoing connection takes it before the server binds it."""
    return cluster_tool().free_ports(1)


def vhw_cmd(*args: object, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vhw", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def acquire(http: httpx.Client, kit, mid) -> str:
    """One console's acquisition over its own connection: "ok" or the refusal's message."""
    resp = http.post("/v1/console/acquire", json=p.encode(decisions.acquisition_request(*kit, mid)))
    return "ok" if resp.status_code == 200 else resp.json()["message"]


def console_http(srv, **kw) -> httpx.Client:
    return httpx.Client(base_url=srv.url, verify=tls_context(srv.ca_der), timeout=60, **kw)


def scrape(
    url: str, *, verify=None, token: str | None = None, answered: set | None = None
) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client's own text parser: {(sample name, labels): value}.
    Each scrape is a new connection; ``answered`` collects which process answered."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(url, verify=verify if verify is not None else True, headers=headers, timeout=30)
    if answered is not None:
        answered.add(resp.headers["x-vhw-process"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


# -- config: the file, the environment, the flag ---------------------------------------------------------


def test_every_run_flag_has_a_config_key():
    from vhw.cli.server import RUN_KEYS, server_run

    flags = {param.name for param in server_run.params if not getattr(param, "hidden", False)} - {"config"}
    assert {"database" if key == "db" else key for key in RUN_KEYS} == flags


def test_config_file_and_its_precedence(tmp_path):
    home = tmp_path / "srv"
    init_port, file_port, env_port, flag_port = free_port(), free_port(), free_port(), free_port()
    assert vhw_cmd("server", "init", "--home", home, "--listen", f"127.0.0.1:{init_port}").returncode == 0
    config = tmp_path / "server.toml"
    config.write_text(f'home = "srv"\nlisten = "127.0.0.1:{file_port}"\nlog_format = "json"\n')

    def run(env: dict, *flags: str) -> tuple[int, list[str]]:
        srv = RunningServer.start(home, run=["--config", str(config), *flags], listen=None, env=env)
        try:
            with srv.console_client() as c:
                c.get("/v1/health", p.Health)
        finally:
            assert srv.stop() == 0
        lines = srv.log.read_text().splitlines()
        srv.log.unlink()
        return int(srv.url.rsplit(":", 1)[1]), lines

    port, lines = run({})  # the file's listen and log format
    assert port == file_port
    access = [json.loads(line) for line in lines if '"vhw.server.access"' in line]
    assert access and {"method", "path", "status", "duration_ms", "role", "request_id"} <= set(access[0])
    port, lines = run({"VHW_SERVER_LISTEN": f"127.0.0.1:{env_port}", "VHW_SERVER_LOG_FORMAT": "text"})
    assert port == env_port  # the environment over the file
    assert any("vhw.server.access" in line and not line.startswith("{") for line in lines)
    port, _ = run({"VHW_SERVER_LISTEN": f"127.0.0.1:{env_port}"}, "--listen", f"127.0.0.1:{flag_port}")
    assert port == flag_port  # the flag over both
    # without any of them: the address `server init` wrote into the home
    srv = RunningServer.start(home, listen=None)
    try:
        assert srv.url == f"https://127.0.0.1:{init_port}"
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    "text, named",
    [
        ('listen = "127.0.0.1:0"\nworker = 2\n', "unknown key 'worker'"),
        ('workers = "two"\n', "workers: must be a whole number"),
        ('log_format = "xml"\n', "log_format"),
        ("pool_size = 0\n", "pool_size: must be a whole number"),
        ('listen = "nowhere"\n', "listen:"),
        ("listen = [\n", "not a TOML configuration"),
    ],
)
def test_bad_config_is_refused_in_one_line(cli, tmp_path, text, named):
    config = tmp_path / "server.toml"
    config.write_text(text)
    r = cli("server", "run", "--config", config)
    assert r.code != 0 and named in r.err and len(r.err.strip().splitlines()) == 1, r
    assert "Traceback" not in r.err
    r = cli("server", "run", "--config", tmp_path / "missing.toml")
    assert r.code != 0 and "missing.toml" in r.err and len(r.err.strip().splitlines()) == 1, r


# -- metrics ------------------------------------------------------------------------------------------------


def story(srv, kits, mids) -> dict[str, int]:
    """Three discs acquired (one fetched again), two refused to other users, one unknown card refused."""
    (a, b, c, d, e) = kits
    with console_http(srv, headers={"connection": "close"}) as http:
        outcomes = [
            acquire(http, a, mids[0]),
            acquire(http, a, mids[0]),
            acquire(http, b, mids[1]),
            acquire(http, c, mids[2]),
            acquire(http, d, mids[0]),
            acquire(http, e, mids[1]),
        ]
        stranger = Card(Id.random(IdKind.CARD), crypto.random_key(), 1)
        resp = http.post(
            "/v1/console/register",
            json=p.encode(decisions.registration_request(stranger, Id.random(IdKind.CLIENT), Id.random(IdKind.HDD))),
        )
    assert outcomes == ["ok"] * 4 + [MEDIA_REFUSED] * 2
    assert resp.json()["message"] == REGISTER.rstrip("\n")
    return {"flagged": 3, "refetched": 1, "media-refused": 2, "registration-refused": 1, "acquire": 6}


def test_metrics_count_a_scripted_story(tmp_path):
    scrape_port = free_port()
    srv = RunningServer.start(tmp_path / "home", run=["--metrics-listen", f"127.0.0.1:{scrape_port}"])
    try:
        kits = make_users(srv, 5)
        mids = press(srv, "METRICS-1", 3)
        want = story(srv, kits, mids)
        operator = Credential.load(srv.credential("operator"))
        # over TLS: the operator credential, and only it
        m = scrape(srv.url + "/metrics", verify=tls_context(srv.ca_der), token=operator.token)
        assert total(m, "vhw_acquisitions_total", result="flagged") == want["flagged"]
        assert total(m, "vhw_acquisitions_total", result="refetched") == want["refetched"]
        assert total(m, "vhw_keys_issued_total") == want["flagged"] + want["refetched"]
        assert total(m, "vhw_refusals_total", kind="media-refused") == want["media-refused"]
        assert total(m, "vhw_refusals_total", kind="registration-refused") == want["registration-refused"]
        assert total(m, "vhw_http_requests_total", endpoint="/v1/console/acquire") == want["acquire"]
        assert total(m, "vhw_http_requests_total", endpoint="/v1/console/acquire", status="200") == 4
        assert total(m, "vhw_http_requests_total", endpoint="/v1/console/register") == 5 + 1
        assert total(m, "vhw_http_request_duration_seconds_count", endpoint="/v1/console/acquire") == 6
        assert total(m, "vhw_http_request_duration_seconds_bucket", endpoint="/v1/console/acquire", le="+Inf") == 6
        assert total(m, "vhw_store_errors_total") == 0
        ctx = tls_context(srv.ca_der)
        assert httpx.get(srv.url + "/metrics", verify=ctx).status_code == 401
        publisher = Credential.load(srv.credential("publisher"))
        assert (
            httpx.get(
                srv.url + "/metrics", verify=ctx, headers={"authorization": f"Bearer {publisher.token}"}
            ).status_code
            == 403
        )
        # the separate address: plain HTTP, no credential, and nothing but /metrics
        plain = scrape(f"http://127.0.0.1:{scrape_port}/metrics")
        assert total(plain, "vhw_acquisitions_total", result="flagged") == want["flagged"]
        assert httpx.get(f"http://127.0.0.1:{scrape_port}/v1/health").status_code == 404
        assert httpx.post(f"http://127.0.0.1:{scrape_port}/v1/console/acquire", json={}).status_code == 404
    finally:
        assert srv.stop() == 0


def test_the_pool_size_is_a_setting(postgres, tmp_path):
    """``pool_size`` in the config file (and VHW_SERVER_POOL_SIZE over it): the most PostgreSQL
    connections a server process holds, as its /metrics says."""
    home = tmp_path / "home"
    assert vhw_cmd("server", "init", "--home", home, "--db", postgres.new_database()).returncode == 0
    config = tmp_path / "server.toml"
    config.write_text("pool_size = 3\n")
    for env, want in (({}, 3), ({"VHW_SERVER_POOL_SIZE": "5"}, 5)):
        srv = RunningServer.start(home, run=["--config", str(config)], env=env)
        try:
            operator = Credential.load(srv.credential("operator"))
            m = scrape(srv.url + "/metrics", verify=tls_context(srv.ca_der), token=operator.token)
            assert total(m, "vhw_db_pool_connections", state="max") == want
        finally:
            assert srv.stop() == 0


def test_what_the_alerts_watch_is_on_metrics_and_renew_cert_renews(cli, tmp_path):
    """/metrics says when the certificates in use expire (the TLS one in 397 days, the CA in ten
    years), whether the database takes writes, and how far and how lately the audit chainer got;
    `vhw server renew-cert` issues the next TLS certificate for the same names, which the server
    serves (and /metrics shows) from its next start, trusted as before."""
    from cryptography import x509

    home = tmp_path / "home"
    srv = RunningServer.start(home)
    operator = Credential.load(srv.credential("operator"))
    try:
        deadline = time.monotonic() + 10
        while True:  # the chainer runs every 2 s; init wrote four entries (the credentials)
            m = scrape(srv.url + "/metrics", verify=tls_context(srv.ca_der), token=operator.token)
            if total(m, "vhw_audit_chain_head") >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        now = time.time()
        assert total(m, "vhw_audit_chain_head") >= 4
        assert now - 10 < total(m, "vhw_audit_chained_timestamp_seconds") <= now + 1
        assert total(m, "vhw_db_writable") == 1
        tls = total(m, "vhw_certificate_expiry_timestamp_seconds", certificate="tls")
        assert abs(tls - (now + 397 * 86400)) < 3600
        assert total(m, "vhw_certificate_expiry_timestamp_seconds", certificate="ca") > now + 3600 * 86400
        assert total(m, "vhw_certificate_expiry_timestamp_seconds", certificate="signing") > now + 3600 * 86400
    finally:
        assert srv.stop() == 0
    before = x509.load_pem_x509_certificate((home / "server.pem").read_bytes())
    time.sleep(1.1)  # (a later second: the new certificate expires later)
    r = cli("server", "renew-cert", "--home", home)
    assert r.code == 0 and "restart the server" in r.out, r
    after = x509.load_pem_x509_certificate((home / "server.pem").read_bytes())
    assert after.serial_number != before.serial_number and after.public_key() != before.public_key()
    alt = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(alt) == before.extensions.get_extension_for_class(alt)
    assert after.not_valid_after_utc > before.not_valid_after_utc
    srv = RunningServer.start(home)  # consoles trust it as before: the CA is the same
    try:
        with srv.console_client() as c:
            assert c.get("/v1/health", p.Health).status == "ok"
        m = scrape(srv.url + "/metrics", verify=tls_context(srv.ca_der), token=operator.token)
        assert total(m, "vhw_certificate_expiry_timestamp_seconds", certificate="tls") > tls
    finally:
        assert srv.stop() == 0


def test_metrics_of_two_workers_add_up(postgres, tmp_path):
    scrape_port = free_port()
    srv = RunningServer.start(
        tmp_path / "home",
        init=["--db", postgres.new_database()],
        run=["--workers", "2", "--metrics-listen", f"127.0.0.1:{scrape_port}"],
    )
    try:
        assert len(srv.workers) == 2
        kits = make_users(srv, 20)
        mids = press(srv, "METRICS-2", 10)
        processes = set()
        outcomes = []
        with console_http(srv, headers={"connection": "close"}) as http:  # each request: a new connection
            for i, mid in enumerate(mids):
                for kit in kits[2 * i : 2 * i + 2]:
                    resp = http.post("/v1/console/acquire", json=p.encode(decisions.acquisition_request(*kit, mid)))
                    processes.add(resp.headers["x-vhw-process"])
                    outcomes.append(resp.status_code)
        assert outcomes.count(200) == 10 and len(processes) == 2  # both took part
        operator = Credential.load(srv.credential("operator"))
        answered: set[str] = set()
        for _ in range(60):  # whichever process answers, it answers for both
            resp_m = scrape(
                srv.url + "/metrics", verify=tls_context(srv.ca_der), token=operator.token, answered=answered
            )
            assert total(resp_m, "vhw_acquisitions_total", result="flagged") == 10
            assert total(resp_m, "vhw_refusals_total", kind="media-refused") == 10
            assert total(resp_m, "vhw_http_requests_total", endpoint="/v1/console/acquire") == 20
            assert total(resp_m, "vhw_http_requests_total", endpoint="/v1/console/register") == 20
            assert total(resp_m, "vhw_db_pool_connections", state="size") >= 1  # PostgreSQL's pool
            if len(answered) == 2:
                break
        assert len(answered) == 2
        plain = scrape(f"http://127.0.0.1:{scrape_port}/metrics")
        assert total(plain, "vhw_acquisitions_total", result="flagged") == 10
    finally:
        assert srv.stop() == 0


# -- logs: one line per request, and never a secret ---------------------------------------------------------


def forms(secret: bytes) -> set[str]:
    """Every way a key could be written into a log line."""
    out = {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
    }
    out |= {x.rstrip("=") for x in out}
    return {x for x in out if len(x) >= 16}


def test_no_secret_in_the_logs_of_a_full_run(cli, tmp_path, title_src):
    """The whole story through the CLI against a server logging at debug level, as text and then
    as JSON; every key of the run, in every encoding, is looked for in every log line."""
    home = tmp_path / "home"
    logs = []
    for log_format in ("text", "json"):
        srv = RunningServer.start(home, run=["--log-format", log_format], top=["-vv"])
        try:
            run_dir = tmp_path / log_format
            run_dir.mkdir()
            [disc, other_disc] = publish(cli, srv, title_src, run_dir, f"LOG-{log_format.upper()}", count=2)
            alice = factory(cli, srv, run_dir / "alice")
            bob = factory(cli, srv, run_dir / "bob")
            for dev in (alice, bob):
                assert cli("console", "register", "--console", dev["console"]).code == 0
            assert cli("console", "insert-disc", disc, "--console", alice["console"]).code == 0
            assert cli("console", "install", "--console", alice["console"]).code == 0
            assert cli("console", "insert-disc", disc, "--console", bob["console"]).code == 0
            assert cli("console", "acquire", "--console", bob["console"]).code == 12
            assert cli("console", "eject-disc", "--console", bob["console"]).code == 0
            assert cli("console", "insert-disc", other_disc, "--console", bob["console"]).code == 0
            assert cli("console", "acquire", "--console", bob["console"]).code == 0
            user = decisions.CardView.open(card_dev.load(alice["card"])).user
            op = ["--credential", srv.credential("operator"), "--server", srv.url]
            assert cli("repair", "card", "--user-id", user, "-o", run_dir / "new.card", *op).code == 0
            assert cli("server", "audit", "--home", home).code == 0
        finally:
            assert srv.stop() == 0
        text = srv.log.read_text()
        srv.log.unlink()
        access = [line for line in text.splitlines() if "vhw.server.access" in line]
        assert len(access) >= 15
        if log_format == "json":  # every line: the log's, and what it said when it stopped
            assert [json.loads(line)["event"] for line in srv.said.splitlines()] == ["stopped"]
            assert all(json.loads(line)["message"] for line in text.splitlines())
            for line in access:
                entry = json.loads(line)
                assert entry["path"].startswith("/v1/") and entry["status"] in (200, 403, 404)
                assert entry["role"] and entry["request_id"] and entry["duration_ms"] >= 0
        logs.append(text)
    secrets = collect_secrets(ServerHome(home), tmp_path)
    assert len(secrets) > 30
    for text in logs:
        for name, secret in secrets:
            for form in forms(secret):
                assert form not in text, f"{name} appears in the server's log"


def collect_secrets(home: ServerHome, folder: Path) -> list[tuple[str, bytes]]:
    """Every key of the run: the server's, the credentials', every card's, device's and title's."""
    found = [("master key", home.keys.read())]
    for pem in ("ca-key.pem", "server-key.pem"):
        body = "".join(home.path(pem).read_text().splitlines()[1:-1])
        found.append((pem, base64.b64decode(body)))
    for path in home.path("credentials").glob("*.json"):
        found.append((f"token {path.name}", Credential.load(path).token.encode()))
    for path in folder.rglob("*.card"):
        found.append((f"MC-Key {path.name}", card_dev.load(path).mc_key))
    for path in folder.rglob("*.rom"):
        found.append((f"console secret {path}", rom_dev.load(path).secret))
    for path in folder.rglob("*.hdd"):
        with HddImage.open(path) as img:
            found.append((f"HDD secret {path}", img.secret))
    store = home.store()
    try:
        with store.transaction() as tx:
            for table, column, ident in AT_REST:
                for row_id, blob in tx.all(f"SELECT {ident}, {column} FROM {table}"):
                    found.append(
                        (
                            f"{table}.{column} of {row_id}",
                            crypto.unwrap(home.keys.read(), bytes(blob), bindings.at_rest(table, row_id)),
                        )
                    )
    finally:
        store.close()
    return found


# -- backup under load, and restore ---------------------------------------------------------------------


class Load:
    """Consoles acquiring fresh discs as fast as they can, each over its own connection; records
    which acquisitions had been answered by when."""

    def __init__(self, srv, kits, mids):
        self.srv, self.kits, self.mids = srv, kits, list(mids)
        self.done: list[tuple[float, Id, int]] = []  # (answered at, MID, user index)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(len(kits))]

    def _run(self, i: int) -> None:
        with console_http(self.srv) as http:
            while not self.stop.is_set():
                with self.lock:
                    if not self.mids:
                        return
                    mid = self.mids.pop()
                if acquire(http, self.kits[i], mid) == "ok":
                    with self.lock:
                        self.done.append((time.monotonic(), mid, i))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def answered_before(self, moment: float) -> set[tuple[str, int]]:
        with self.lock:
            return {(str(mid), i) for at, mid, i in self.done if at < moment}


def flagged(home: ServerHome, database: str | None = None) -> dict[str, str]:
    store = home.store(database)
    try:
        with store.transaction() as tx:
            return {mid: user for mid, user in tx.all("SELECT mid, flagged_by FROM media WHERE flagged_by IS NOT NULL")}
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backup_under_load_and_restore(request, tmp_path, backend):
    db = database_for(request, backend)
    srv = RunningServer.start(tmp_path / "home", init=["--db", db] if db else [])
    new_db = database_for(request, backend) or None
    try:
        kits = make_users(srv, 8)
        user_of = {str(view.user): i for i, (view, _) in enumerate(kits)}
        mids = press(srv, "BACKUP-1", 600)
        by_label = {str(d): d for d in mids}
        out = tmp_path / "backups" / "vhw.backup"
        out.parent.mkdir()
        with Load(srv, kits, mids) as load:
            while len(load.done) < 60:
                time.sleep(0.05)
            started = time.monotonic()
            r = vhw_cmd("server", "backup", out, "--home", srv.home.root)
            assert r.returncode == 0, r.stderr
            before = load.answered_before(started)
            while len(load.done) < len(before) + 60:  # and the load goes on after it
                time.sleep(0.05)
        # a live database is never overwritten
        r = vhw_cmd("server", "restore", out, "--home", srv.home.root)
        assert r.returncode != 0 and "running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        # keep the old server's view to compare with
        old_flags = flagged(srv.home)
    finally:
        assert srv.stop() == 0
    r = vhw_cmd("server", "restore", out, "--home", srv.home.root)  # stopped, but its database exists
    assert r.returncode != 0 and "refuses to overwrite" in r.stderr, r.stderr
    r = vhw_cmd("server", "restore", srv.home.path("ca.pem"), "--home", srv.home.root)
    assert r.returncode != 0 and "not a backup" in r.stderr and "Traceback" not in r.stderr
    # into a home that does not exist: the line says to bring the old home's keys (not to init one)
    r = vhw_cmd("server", "restore", out, "--home", tmp_path / "nowhere")
    assert r.returncode == 9 and "--from-home" in r.stderr and "server init" in r.stderr, r.stderr
    assert not (tmp_path / "nowhere").exists()
    # into a home of another master key: refused before anything is written, the home as it was
    other = tmp_path / "other"
    other_db = database_for(request, backend) or None
    assert vhw_cmd("server", "init", "--home", other, *(["--db", other_db] if other_db else [])).returncode == 0
    if other_db is None:
        (other / "vhw.db").unlink()  # (its new database moved away: restore takes only a new one)
        r = vhw_cmd("server", "restore", out, "--home", other)
        assert not (other / "vhw.db").exists()
    else:
        empty = database_for(request, backend)
        r = vhw_cmd("server", "restore", out, "--home", other, "--db", empty)
        store = ServerHome(other).store(empty)
        try:
            assert store.version() == 0  # nothing was restored into it
        finally:
            store.close()
    assert r.returncode == 16 and "another master key" in r.stderr and "nothing was restored" in r.stderr, r.stderr

    home = ServerHome(tmp_path / "restored")  # made from the old home's keys, certificates and credentials
    r = vhw_cmd(
        "server",
        "restore",
        out,
        "--home",
        home.root,
        "--from-home",
        srv.home.root,
        *(["--db", new_db] if new_db else []),
    )
    assert r.returncode == 0, r.stderr
    restored = flagged(home, new_db)
    # every flag answered before the backup began is there, for the same user; nothing the old
    # server never flagged is
    assert {(mid, user_of[user]) for mid, user in restored.items()} >= before
    assert restored.items() <= old_flags.items()
    assert len(restored) < len(old_flags)  # (and the load's later flags are not: it was under load)
    srv2 = RunningServer.start(home.root, run=["--db", new_db] if new_db else [])
    try:
        with console_http(srv2) as http:
            # the once-per-disc rule across the restore: flagged discs stay refused to others ...
            for mid, user in list(restored.items())[:20]:
                other = (user_of[user] + 1) % len(kits)
                assert acquire(http, kits[other], by_label[mid]) == MEDIA_REFUSED
                assert acquire(http, kits[user_of[user]], by_label[mid]) == "ok"  # a refetch
            # ... and a disc not flagged in the backup goes to exactly one of two users racing for it
            free = [by_label[m] for m in by_label if m not in restored][:10]

            def race(kit, mid, results):
                with console_http(srv2) as own:
                    results.append(acquire(own, kit, mid))

            for mid in free:
                results: list[str] = []
                racers = [threading.Thread(target=race, args=(k, mid, results)) for k in kits[:2]]
                for t in racers:
                    t.start()
                for t in racers:
                    t.join()
                assert sorted(results) == sorted(["ok", MEDIA_REFUSED]), results
    finally:
        assert srv2.stop() == 0
    r = vhw_cmd("server", "audit", "--verify", "--home", home.root, *(["--db", new_db] if new_db else []))
    assert r.returncode == 0, r.stderr
    r = vhw_cmd("server", "audit", "--json", "--home", home.root, *(["--db", new_db] if new_db else []))
    assert any(e["action"] == "restore-database" for e in json.loads(r.stdout)["entries"])


# -- master-key rotation ----------------------------------------------------------------------------------


def keys_at_rest(home: ServerHome) -> dict[tuple[str, str], bytes]:
    """Every key at rest, opened under the home's master key (fails if any does not open)."""
    store = home.store()
    try:
        with store.transaction() as tx:
            return {
                (table, row_id): crypto.unwrap(home.keys.read(), bytes(blob), bindings.at_rest(table, row_id))
                for table, column, ident in AT_REST
                for row_id, blob in tx.all(f"SELECT {ident}, {column} FROM {table}")
            }
    finally:
        store.close()


def add_cards(home: ServerHome, n: int) -> None:
    """Many registered cards at once, straight into the database (so that a rotation takes long
    enough to be killed in the middle)."""
    key = home.keys.read()
    rows = []
    for _ in range(n):
        mc_id = str(Id.random(IdKind.CARD))
        rows.append((mc_id, crypto.wrap(key, crypto.random_key(), bindings.at_rest("cards", mc_id)), 1))
    store = home.store()
    try:
        with store.transaction() as tx:
            tx.executemany("INSERT INTO cards (mc_id, mc_key, registered) VALUES (?, ?, ?)", rows)
    finally:
        store.close()


@pytest.fixture
def populated(tmp_path):
    """A stopped server home with users, titles and one flagged (unconfirmed) disc per user."""
    return served_four_acquisitions(tmp_path / "home", "ROTATE-1")


def served_four_acquisitions(home: Path, title: str, init: list[str] = ()):
    """A server that registered four users and gave each the keys of one disc, then stopped
    (its last act: chain what is left of the audit log and sign the head)."""
    srv = RunningServer.start(home, init=init)
    try:
        kits = make_users(srv, 4)
        mids = press(srv, title, 4)
        with console_http(srv) as http:
            assert [acquire(http, k, m) for k, m in zip(kits, mids, strict=True)] == ["ok"] * 4
    finally:
        assert srv.stop() == 0
    return srv, kits, mids


def test_rotation_re_encrypts_every_key_and_the_old_key_is_gone(populated):
    srv, kits, mids = populated
    home = srv.home
    before, old_key = keys_at_rest(home), home.keys.read()
    again = RunningServer.start(home.root)  # refused while a server serves from the home
    try:
        r = vhw_cmd("server", "rotate-master-key", "--home", home.root)
        assert r.returncode != 0 and "running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        assert again.stop() == 0
    r = vhw_cmd("server", "rotate-master-key", "--home", home.root)
    assert r.returncode == 0 and f"re-encrypted {len(before)} keys" in r.stdout, r
    assert home.keys.read() != old_key and not home.path("master.key.new").exists()
    assert keys_at_rest(home) == before  # the same keys, under the new master key
    for (table, row_id), blob in blob_of(home).items():
        with pytest.raises(crypto.Invalid):
            crypto.unwrap(old_key, blob, bindings.at_rest(table, row_id))
    assert old_key.hex() not in "".join(p.read_text(errors="replace") for p in home.root.rglob("*") if p.is_file())
    srv = RunningServer.start(home.root)
    try:
        with console_http(srv) as http:  # the users fetch their keys again, under the new master key
            assert [acquire(http, k, m) for k, m in zip(kits, mids, strict=True)] == ["ok"] * 4
    finally:
        assert srv.stop() == 0


def blob_of(home: ServerHome) -> dict[tuple[str, str], bytes]:
    store = home.store()
    try:
        with store.transaction() as tx:
            return {
                (table, row_id): bytes(blob)
                for table, column, ident in AT_REST
                for row_id, blob in tx.all(f"SELECT {ident}, {column} FROM {table}")
            }
    finally:
        store.close()


def test_rotation_killed_at_any_moment_leaves_every_key_under_one_master_key(populated):
    srv, kits, mids = populated
    home = srv.home
    add_cards(home, 30000)
    before = keys_at_rest(home)
    started = time.monotonic()  # how long one rotation takes here
    assert vhw_cmd("server", "rotate-master-key", "--home", home.root).returncode == 0
    duration = time.monotonic() - started
    rnd = random.Random(11)
    outcomes = set()
    for attempt in range(4):
        old_key = home.keys.read()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhw", "server", "rotate-master-key", "--home", str(home.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if attempt % 2 == 0:  # as soon as the new key is written: in the middle of the re-encryption
            while not home.path("master.key.new").exists() and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rnd.uniform(0, 0.3) * duration)
        else:
            time.sleep(rnd.uniform(0.2, 1.0) * duration)
        pending = home.path("master.key.new").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the server starts, and finds every key readable under exactly one key: master.key
        server = RunningServer.start(home.root)
        try:
            with console_http(server) as http:
                assert acquire(http, kits[0], mids[0]) == "ok"
        finally:
            assert server.stop() == 0
        assert not home.path("master.key.new").exists()
        assert keys_at_rest(home) == before
        outcomes.add(
            ("mid-way" if pending else "before or after")
            + (", rotated" if home.keys.read() != old_key else ", not rotated")
        )
    assert any(o.startswith("mid-way") for o in outcomes), outcomes


def test_rotation_committed_but_killed_before_the_key_moved_is_finished_at_start(populated, monkeypatch):
    """The narrowest window: the database is under the new key, master.key still holds the old."""
    srv, kits, mids = populated
    home = srv.home
    before, old_key = keys_at_rest(home), home.keys.read()
    real_replace = os.replace

    def killed(src, dst):
        if Path(dst).name == "master.key":
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr("vhw.server.home.os.replace", killed)
    store = home.store()
    with pytest.raises(KeyboardInterrupt):
        home.keys.rotate(store)
    store.close()
    monkeypatch.undo()
    assert home.keys.read() == old_key and home.path("master.key.new").exists()
    server = RunningServer.start(home.root)
    try:
        with console_http(server) as http:
            assert acquire(http, kits[1], mids[1]) == "ok"
    finally:
        assert server.stop() == 0
    assert home.keys.read() != old_key and not home.path("master.key.new").exists()
    assert keys_at_rest(home) == before
    assert "finished a master key rotation" in server.log.read_text()


def test_a_master_key_that_is_not_the_databases_is_refused_at_start(populated):
    srv, _, _ = populated
    srv.home.path("master.key").write_text(crypto.random_key().hex() + "\n")
    r = vhw_cmd("server", "run", "--home", srv.home.root, "--listen", "127.0.0.1:0", timeout=30)
    assert r.returncode != 0 and "master.key" in r.stderr and "Traceback" not in r.stderr


# -- the tamper-evident audit log ---------------------------------------------------------------------------


class Rows:
    """The audit table of a home's database, edited behind the server's back."""

    def __init__(self, home: ServerHome, url: str):
        self.home, self.url = home, url
        self.verified = False

    def sql(self, statement: str, *args) -> list[tuple]:
        if self.url.startswith("sqlite:///"):
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                rows = conn.execute(statement, args).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []

    def verify(self) -> subprocess.CompletedProcess:
        """`vhw server audit --verify`: the first time as the real executable, then through the same
        CLI in this process (a dozen runs of it, a second of start-up each)."""
        args = ["server", "audit", "--verify", "--home", str(self.home.root)]
        if not self.verified:
            self.verified = True
            return vhw_cmd(*args)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(args)
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("backend", BACKENDS)
def test_audit_chain_shows_edited_deleted_and_reordered_rows(request, tmp_path, backend):
    db = database_for(request, backend)
    srv, kits, mids = served_four_acquisitions(tmp_path / "home", "AUDIT-1", ["--db", db] if db else [])
    rows = Rows(srv.home, srv.home.database_url())
    r = rows.verify()
    assert r.returncode == 0 and "intact" in r.stdout and "0 entries waiting" in r.stdout, r
    entries = rows.sql("SELECT seq, position, detail, action FROM audit ORDER BY position")
    assert len(entries) > 20 and [e[1] for e in entries] == list(range(1, len(entries) + 1))
    victim = entries[len(entries) // 2]
    seq, position, detail, action = victim

    # an edit: one key issue now names another user
    rows.sql("UPDATE audit SET detail = ? WHERE seq = ?", detail.replace('"', "'", 1) + " ", seq)
    r = rows.verify()
    assert r.returncode != 0 and f"entry {seq} " in r.stderr and "changed" in r.stderr, r.stderr
    rows.sql("UPDATE audit SET detail = ? WHERE seq = ?", detail, seq)
    assert rows.verify().returncode == 0

    # an edit that recomputes the entry's own hash (without the platform key, the chain still breaks)
    # ... is the same as a deletion and reinsertion: delete one row
    saved = rows.sql(
        "SELECT seq, at, actor, action, subject, detail, position, prev_hash, hash FROM audit WHERE seq = ?", seq
    )[0]
    rows.sql("DELETE FROM audit WHERE seq = ?", seq)
    r = rows.verify()
    assert r.returncode != 0 and f"position {position} is missing" in r.stderr, r.stderr
    rows.sql(
        "INSERT INTO audit (seq, at, actor, action, subject, detail, position, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *saved,
    )
    assert rows.verify().returncode == 0

    # a deletion with the positions after it renumbered
    rows.sql("DELETE FROM audit WHERE seq = ?", seq)
    rows.sql("UPDATE audit SET position = -(position - 1) WHERE position > ?", position)
    rows.sql("UPDATE audit SET position = -position WHERE position < 0")
    r = rows.verify()
    assert r.returncode != 0 and "does not follow" in r.stderr, r.stderr
    rows.sql("UPDATE audit SET position = -(position + 1) WHERE position >= ?", position)
    rows.sql("UPDATE audit SET position = -position WHERE position < 0")
    rows.sql(
        "INSERT INTO audit (seq, at, actor, action, subject, detail, position, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *saved,
    )
    assert rows.verify().returncode == 0

    # a reorder: two entries swap places
    a, b = entries[3], entries[7]
    rows.sql("UPDATE audit SET position = -1 WHERE seq = ?", a[0])
    rows.sql("UPDATE audit SET position = ? WHERE seq = ?", a[1], b[0])
    rows.sql("UPDATE audit SET position = ? WHERE seq = ?", b[1], a[0])
    r = rows.verify()
    assert r.returncode != 0 and f"entry {b[0]} " in r.stderr, r.stderr
    rows.sql("UPDATE audit SET position = -1 WHERE seq = ?", a[0])
    rows.sql("UPDATE audit SET position = ? WHERE seq = ?", b[1], b[0])
    rows.sql("UPDATE audit SET position = ? WHERE seq = ?", a[1], a[0])
    assert rows.verify().returncode == 0

    # the tail cut off: the signed head beyond the end gives it away
    last = rows.sql(
        "SELECT seq, at, actor, action, subject, detail, position, prev_hash, hash FROM audit"
        " ORDER BY position DESC LIMIT 1"
    )[0]
    rows.sql("DELETE FROM audit WHERE seq = ?", last[0])
    r = rows.verify()
    assert r.returncode != 0 and "deleted" in r.stderr, r.stderr
    rows.sql(
        "INSERT INTO audit (seq, at, actor, action, subject, detail, position, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *last,
    )

    # the whole chain rewritten consistently, with hashes recomputed: only the signed heads show it
    from vhw.server import audit

    chain = rows.sql("SELECT seq, at, actor, action, subject, detail FROM audit ORDER BY position")
    forged = list(chain)
    forged[2] = (*forged[2][:5], '{"forged": true}')
    relinked = audit.chain((0, audit.GENESIS), [audit.Entry(*e) for e in forged])
    for e in relinked:
        rows.sql(
            "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?", e.detail, e.prev_hash, e.hash, e.seq
        )
    r = rows.verify()
    assert r.returncode != 0 and "rewritten" in r.stderr, r.stderr
    original = audit.chain((0, audit.GENESIS), [audit.Entry(*e) for e in chain])
    for e in original:
        rows.sql(
            "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?", e.detail, e.prev_hash, e.hash, e.seq
        )
    assert rows.verify().returncode == 0

    # a signed head forged without the platform key
    heads = srv.home.path("audit-heads.jsonl")
    good = heads.read_text()
    line = json.loads(good.splitlines()[-1])
    line["hash"] = bytes(32).hex()
    heads.write_text(good + json.dumps(line) + "\n")
    r = rows.verify()
    assert r.returncode != 0 and "signature does not verify" in r.stderr, r.stderr
    heads.write_text(good)
    assert rows.verify().returncode == 0


def test_entries_are_chained_while_the_server_runs(tmp_path):
    srv = RunningServer.start(tmp_path / "home")
    try:
        make_users(srv, 2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = vhw_cmd("server", "audit", "--verify", "--home", srv.home.root)
            assert r.returncode == 0, r.stderr
            if "0 entries waiting" in r.stdout and "0 signed heads" not in r.stdout:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not chained while running: {r.stdout}")
    finally:
        assert srv.stop() == 0


# -- the service unit ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd is not installed")
def test_unit_file_verifies(tmp_path):
    unit = Path(__file__).parent.parent / "deploy" / "vhw-server.service"
    text = unit.read_text()
    for key in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=vhw",
        "ExecStart=/opt/vhw/bin/vhw server run --config /etc/vhw/server.toml",
    ):
        assert key in text
    # verified with the executable where this checkout installed it
    vhw_bin = Path(sys.executable).parent / "vhw"
    (tmp_path / "vhw-server.service").write_text(text.replace("/opt/vhw/bin/vhw", str(vhw_bin)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "vhw-server.service")], capture_output=True, text=True
    )
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "vhw-server.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    # and the config it names is one `server run` accepts
    import tomllib

    from vhw.cli.server import RUN_KEYS

    assert set(tomllib.loads((unit.parent / "server.toml").read_text())) <= RUN_KEYS
