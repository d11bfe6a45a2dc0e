"""The licensing server for real: `vhw server run` on 127.0.0.1 with TLS, driven by the CLI,
by the client library and by raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
import trio

from vhw import bindings, crypto
from vhw import protocol as p
from vhw.bindings import DeviceSecrets
from vhw.client import Client, tls_context
from vhw.console import decisions
from vhw.devices import card as card_dev
from vhw.devices import rom as rom_dev
from vhw.devices.disc import DiscImage
from vhw.devices.hdd import HddImage
from vhw.errors import REFUSALS, MediaRefused, NetworkError
from vhw.formats.card import Card
from vhw.ids import Id, IdKind
from vhw.pki import make_ca
from vhw.publisher.keystore import KeyStore
from vhw.roles import ROLES
from vhw.server.credentials import Credential
from vhw.server.endpoints import ENDPOINTS

from .conftest import BACKENDS, MEDIA, REGISTER, USER, database_for
from .hostile_http import DROPPED, HOSTILE, attack_over_tls, ends_bare_hypercorn, said_since
from .servers import RunningServer, factory, make_disc, make_users, publish
from .world import new_disc, pressed


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, tmp_path_factory):
    """The server under test, on SQLite and on PostgreSQL: every test here runs on both."""
    db = database_for(request, request.param)
    server = RunningServer.start(tmp_path_factory.mktemp("server") / "home", init=["--db", db] if db else [])
    yield server
    assert server.stop() == 0, server.log.read_text()[-3000:]


# -- 1. end to end through the CLI ----------------------------------------------------------------


def test_register_and_acquire_end_to_end(cli, srv, tmp_path, title_src, vhw_home):
    [disc] = publish(cli, srv, title_src, tmp_path, "E2E-1")
    dev = factory(cli, srv, tmp_path / "alice")
    con = ["--console", dev["console"]]
    assert cli("console", "insert-disc", disc, *con).code == 0
    r = cli("console", "register", *con)
    assert r.code == 0, r
    printed_user = Id.parse(r.out.split("User ID ")[1].split()[0], IdKind.USER)
    r = cli("console", "acquire", *con)
    assert r.code == 0 and "E2E-1" in r.out, r
    # the card now holds all the patent says, each opening with its MC-Key as exactly what it is
    # (the two keys also sealed to this console and HDD: their secrets open that layer)
    card = card_dev.load(dev["card"])
    view = decisions.CardView.open(card)
    user = view.user
    assert user == printed_user
    [(lic, mid)] = view.licenses()
    with DiscImage.open(disc) as d:
        assert mid == d.disc.mid
    rom = rom_dev.load(dev["rom"])
    with HddImage.open(dev["hdd"]) as img:
        devices = DeviceSecrets(rom.client_id, img.hdd_id, rom.secret, img.secret)
    content_key = bindings.open_content_key(devices, card.mc_key, card.mc_id, mid, "E2E-1", lic.content_key)
    assert content_key == KeyStore(vhw_home / "publisher").title("E2E-1").content_key
    cgk = bindings.open_content_gen_key(devices, card.mc_key, card.mc_id, user, card.content_gen_key)
    assert bindings.open_device_ids(cgk, user, card.sealed_ids) == (devices.client_id, devices.hdd_id)
    with pytest.raises(crypto.Invalid):  # the MC-Key alone opens neither
        crypto.unwrap(card.mc_key, card.content_gen_key, bindings.content_gen_key(card.mc_id, user))
    status = json.loads(cli("console", "status", "--json", *con).out)
    assert status["slots"]["1"]["user_id"] == str(user) and status["tray"]["title_id"] == "E2E-1"


# -- 2. the refusals, each from the situation the patent describes ---------------------------------


def test_refusals_through_the_cli(cli, srv, tmp_path, title_src):
    [disc] = publish(cli, srv, title_src, tmp_path, "REF-1")
    # a memory card the platform never registered
    stranger = factory(cli, srv, tmp_path / "stranger", register_card=False)
    r = cli("console", "register", "--console", stranger["console"])
    assert (r.code, r.err) == (10, REGISTER)
    # acquiring with a registered card in a console it was not registered with
    alice = factory(cli, srv, tmp_path / "alice")
    bob = factory(cli, srv, tmp_path / "bob")
    assert cli("console", "register", "--console", alice["console"]).code == 0
    assert cli("console", "register", "--console", bob["console"]).code == 0
    assert cli("console", "eject-card", "--console", alice["console"]).code == 0
    assert cli("console", "insert-card", alice["card"], "--slot", "2", "--console", bob["console"]).code == 0
    assert cli("console", "insert-disc", disc, "--console", bob["console"]).code == 0
    r = cli("console", "acquire", "--slot", "2", "--console", bob["console"])
    assert (r.code, r.err) == (11, USER)
    # the disc lent to a second user after its owner acquired it
    assert cli("console", "acquire", "--console", bob["console"]).code == 0
    assert cli("console", "eject-card", "--slot", "2", "--console", bob["console"]).code == 0
    assert cli("console", "insert-card", alice["card"], "--console", alice["console"]).code == 0
    assert cli("console", "insert-disc", disc, "--console", alice["console"]).code == 0
    r = cli("console", "acquire", "--console", alice["console"])
    assert (r.code, r.err) == (12, MEDIA)


# -- 3. once per disc under concurrency ----------------------------------------------------------


async def test_100_concurrent_acquisitions_of_one_mid(srv):
    kits = await trio.to_thread.run_sync(make_users, srv, 100)
    mid = await trio.to_thread.run_sync(make_disc, srv, "RACE-1")
    ctx = tls_context(srv.ca_der)
    outcomes: list[str] = []
    start = trio.Event()

    async def one(view, hw):
        body = p.encode(decisions.acquisition_request(view, hw, mid))
        async with httpx.AsyncClient(verify=ctx, timeout=60) as http:
            await start.wait()
            resp = await http.post(srv.url + "/v1/console/acquire", json=body)
        outcomes.append("ok" if resp.status_code == 200 else resp.json()["message"])

    async with trio.open_nursery() as nursery:
        for kit in kits:
            nursery.start_soon(one, *kit)
        await trio.sleep(0.5)
        start.set()
    assert outcomes.count("ok") == 1
    assert outcomes.count(MEDIA.rstrip("\n")) == 99


# -- 4. a lost answer -------------------------------------------------------------------------------


class DroppingProxy:
    """Relays one TLS connection to the server and loses the server's answer.

    TLS records pass through until the client's request has gone by (TLS 1.3: the client's first
    application-data record is its Finished message, the second its request). From then on the
    proxy keeps what the server sends until the server falls silent (its answer is complete, so
    the flag is committed), then hangs up on the client without passing the answer on.
    """

    def __init__(self, target: str):
        host, port = target.removeprefix("https://").rsplit(":", 1)
        self.target = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.request_sent = threading.Event()
        self.withheld = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.sock.accept()
        upstream = socket.create_connection(self.target)

        def pump_up():
            buf, app_records = b"", 0
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
                    buf += data
                    while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                        kind, size = buf[0], int.from_bytes(buf[3:5], "big")
                        buf = buf[5 + size :]
                        app_records += kind == 0x17
                        if app_records >= 2:
                            self.request_sent.set()
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if self.request_sent.is_set():
                    self.withheld += len(data)  # the answer: lost on the line
                    upstream.settimeout(1.0)  # until the server has said all it will say
                else:
                    client.sendall(data)
        except TimeoutError:
            pass
        for sock in (client, upstream):  # shutdown, not just close: pump_up still reads from them
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_lost_answer_can_be_fetched_again_until_confirmed(srv):
    [(view, hw)] = make_users(srv, 1)
    disc = make_disc(srv, "LOST-1")
    mid = disc.mid
    req = decisions.acquisition_request(view, hw, disc)
    proxy = DroppingProxy(srv.url)
    with httpx.Client(verify=tls_context(srv.ca_der), headers={"connection": "close"}, timeout=30) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(proxy.url + "/v1/console/acquire", json=p.encode(req))
    assert proxy.withheld > 0
    with srv.role_client("operator") as op:  # the server committed the flag before the line dropped
        flags = [
            e
            for e in op.call("/v1/operator/audit", p.AuditQuery(limit=1000), p.AuditPage).entries
            if e.action == "flag-mid" and e.subject == str(mid)
        ]
    assert len(flags) == 1
    with srv.console_client() as c:
        resp = c.call("/v1/console/acquire", req, p.AcquireResponse)  # the same user fetches again
        view = decisions.accept_acquisition(view, req, resp, mid, hw, acquired=1)
        assert decisions.copy_keys(view, hw, mid, "LOST-1")
        c.call("/v1/console/confirm", decisions.confirm_request(view, hw, disc), p.Done)
        c.call("/v1/console/acquire", req, p.AcquireResponse)  # the owner may install it again
    [(other_view, other_hw)] = make_users(srv, 1)
    with srv.console_client() as c, pytest.raises(MediaRefused):  # no one else may, ever
        c.call("/v1/console/acquire", decisions.acquisition_request(other_view, other_hw, disc), p.AcquireResponse)
    with srv.role_client("operator") as op:
        actions = [e.action for e in op.call("/v1/operator/audit", p.AuditQuery(limit=1000), p.AuditPage).entries]
    assert {"flag-mid", "refetch-keys", "confirm-install", "reinstall-keys"} <= set(actions)


# -- 5. keys at rest ------------------------------------------------------------------------------------


def test_database_holds_no_key(cli, srv, tmp_path, title_src, vhw_home):
    [disc] = publish(cli, srv, title_src, tmp_path, "REST-1")
    dev = factory(cli, srv, tmp_path / "carol")
    con = ["--console", dev["console"]]
    assert cli("console", "insert-disc", disc, *con).code == 0
    assert cli("console", "register", *con).code == 0
    assert cli("console", "acquire", *con).code == 0
    card = card_dev.load(dev["card"])
    rom = rom_dev.load(dev["rom"])
    with HddImage.open(dev["hdd"]) as img:
        hw = decisions.Hardware(DeviceSecrets(rom.client_id, img.hdd_id, rom.secret, img.secret), rom.token_anchor)
    match = decisions.devices_match(decisions.CardView.open(card), hw)
    secrets = [
        card.mc_key,
        KeyStore(vhw_home / "publisher").title("REST-1").content_key,
        match.content_gen_key,
        match.binding.key,
        rom.secret,
        hw.devices.hdd,
        srv.home.keys.read(),
    ]
    secrets += [Credential.load(srv.credential(r)).token.encode() for r in ROLES]
    url = srv.home.database_url()
    if url.startswith("postgresql://"):
        from .pg import dump as pg_dump

        dump = pg_dump(url)  # the whole database, as an operator's backup would hold it
    else:
        dump = b"".join(f.read_bytes() for f in srv.home.root.glob("vhw.db*"))
    assert len(dump) > 10_000
    for secret in secrets:
        for form in (
            secret,
            secret.hex().encode(),
            secret.hex().upper().encode(),
            base64.b64encode(secret),
            base64.urlsafe_b64encode(secret),
            base64.b64encode(secret).rstrip(b"="),
        ):
            assert form not in dump


# -- 6. roles -----------------------------------------------------------------------------------------


def test_role_matrix(srv):
    [(view, hw), (view2, _)] = make_users(srv, 2)
    title, digest = "ROLE-1", os.urandom(32)
    disc, bought = new_disc(digest), decisions.Medium(Id.random(IdKind.MEDIA), digest)
    fresh = Card(Id.random(IdKind.CARD), crypto.random_key(), 1)
    new_console = Id.random(IdKind.CLIENT)
    acquire = decisions.acquisition_request(view, hw, disc)
    purchase = decisions.acquisition_request(view, hw, bought)
    key = crypto.device_public(crypto.device_secret())
    bodies = {
        "/v1/manufacturer/consoles": p.RegisterConsole(new_console, key),
        "/v1/manufacturer/hdds": p.RegisterHdd(Id.random(IdKind.HDD), key),
        "/v1/manufacturer/cards": p.RegisterCard(fresh.mc_id, fresh.mc_key),
        "/v1/publisher/titles": p.RegisterTitle(title, title, crypto.random_key(), digest),
        "/v1/publisher/media": p.RegisterMedia(title, (pressed(disc),)),
        "/v1/operator/audit": p.AuditQuery(),
        "/v1/operator/repair": p.RepairRequest(view2.card.mc_id, new_console),
        "/v1/operator/reissue": p.ReissueRequest(view2.user, Id.random(IdKind.CARD), crypto.random_key()),
        "/v1/broker/register": decisions.registration_request(view.card, hw.client_id, hw.hdd_id),
        "/v1/broker/acquire": acquire,
        "/v1/broker/refetch": acquire,
        "/v1/broker/purchase": p.PurchaseRequest(**purchase.__dict__, title_id=title),
        "/v1/broker/confirm": decisions.confirm_request(view, hw, disc),
    }
    creds = {r: Credential.load(srv.credential(r)).token for r in ROLES}
    ctx = tls_context(srv.ca_der)
    with httpx.Client(base_url=srv.url, verify=ctx) as http:
        guarded = sorted((ep for ep in ENDPOINTS if ep.role in ROLES), key=lambda ep: ROLES.index(ep.role))
        assert {ep.path for ep in guarded} == set(bodies)
        for ep in guarded:  # publisher before broker, titles before media, acquire before confirm
            body = p.encode(bodies[ep.path])
            for header in ({}, {"authorization": "Bearer nonsense"}, {"authorization": "Basic x"}):
                r = http.post(ep.path, json=body, headers=header)
                assert r.status_code == 401, (ep.path, r.text)
            for role, token in creds.items():
                if role == ep.role:
                    continue
                r = http.post(ep.path, json=body, headers={"authorization": f"Bearer {token}"})
                assert r.status_code == 403 and r.json()["error"] == "forbidden", (role, ep.path, r.text)
            r = http.post(ep.path, json=body, headers={"authorization": f"Bearer {creds[ep.role]}"})
            assert r.status_code == 200, (ep.path, r.text)


# -- 7. malformed and oversize requests -----------------------------------------------------------------


def test_malformed_requests_get_a_4xx_and_the_server_goes_on(srv):
    [kit] = make_users(srv, 1)
    good = p.encode(decisions.acquisition_request(*kit, new_disc(os.urandom(32))))
    pub = {"authorization": f"Bearer {Credential.load(srv.credential('publisher')).token}"}
    big = "A" * (70 * 1024)

    def raw(path="/v1/console/acquire", **kw):
        return ("POST", path, kw)

    cases = [
        raw(content=b"{"),
        raw(content=b"[1, 2]"),
        raw(content=b'"text"'),
        raw(content=b""),
        raw(content=b"null"),
        raw(json={**good, "extra": 1}),
        raw(json={k: v for k, v in good.items() if k != "mid"}),
        raw(json={**good, "mc_id": 12345}),
        raw(json={**good, "mc_id": good["mc_id"][:-1] + ("X" if good["mc_id"][-1] != "X" else "Y")}),
        raw(json={**good, "mc_id": good["hdd_id"]}),
        raw(json={**good, "user_id": "***not base64***"}),
        raw(json={**good, "user_id": base64.b64encode(os.urandom(5000)).decode()}),
        raw(json={**good, "user_id": base64.b64encode(b"short").decode()}),
        raw(json={**good, "client_id": None}),
        raw(json={**good, "hdd_id": ["a", "list"]}),
        raw(content=json.dumps({**good, "pad": big}).encode()),
        raw(content=iter([b"[" * 10, b"1" * (70 * 1024)])),  # chunked, no length, too long
        raw(content=b"{}", headers={"content-type": "text/plain"}),
        raw(content=b'{"mc_id": NaN}'),
        raw(content=b"[" * 50_000 + b"]" * 50_000),
        raw(content=b'{"mc_id": "\xff\xfe"}'),
        raw(
            "/v1/publisher/titles",
            json={"title_id": "lower-case", "name": "x", "content_key": "", "title_digest": ""},
            headers=pub,
        ),
        raw(
            "/v1/publisher/media",
            json={
                "title_id": "T-1",
                "discs": [{}] * 1001,
            },
            headers=pub,
        ),
        raw("/v1/no/such/endpoint", json={}),
        ("GET", "/v1/console/acquire", {}),
        ("PUT", "/v1/health", {}),
        raw(json=good, headers={"x-padding": "y" * 20_000}),
    ]
    ctx = tls_context(srv.ca_der)
    with httpx.Client(base_url=srv.url, verify=ctx, timeout=30) as http:
        assert len(cases) >= 20
        for method, path, kw in cases:
            try:
                r = http.request(method, path, **kw)
            except httpx.RemoteProtocolError:  # the oversize header: hypercorn hangs up
                assert "x-padding" in str(kw)
            else:
                assert 400 <= r.status_code < 500, (path, kw.keys(), r.status_code, r.text[:200])
                if r.headers.get("content-type", "").startswith("application/json"):
                    assert r.json()["message"], r.text
            assert http.get("/v1/health").json()["status"] == "ok"


@pytest.mark.parametrize("attack", HOSTILE, ids=lambda a: a.__name__.strip("_"))
def test_a_request_that_trips_the_http_layer_costs_its_own_connection_only(srv, attack, tmp_path):
    """Each of these ended hypercorn's whole server: any client could stop the service with one
    request. vhw drops that connection alone (``vhw.httpapi.OneConnection``), says so in its log,
    and serves the next one. The control: the same attack ends a bare hypercorn server."""
    logged = srv.log.stat().st_size
    attack_over_tls(srv.url, srv.ca_der, attack)
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.ca_der), timeout=30) as http:
        assert http.get("/v1/health").json()["status"] == "ok"
    assert srv.proc.poll() is None
    assert said_since(srv.log, logged, DROPPED)
    assert ends_bare_hypercorn(attack, tmp_path)


# -- 8. the client refuses untrusted servers --------------------------------------------------------------


def test_plain_http_and_wrong_ca_are_refused(srv, cli, tmp_path):
    with pytest.raises(NetworkError, match="plain HTTP"):
        Client(srv.url.replace("https", "http"), tls_context(srv.ca_der))
    other_ca, _ = make_ca("impostor CA")
    with Client(srv.url, tls_context(other_ca)) as c, pytest.raises(NetworkError, match="not signed by the trusted"):
        c.get("/v1/health", p.Health)
    # a server that answers in plain HTTP where TLS is expected
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        with Client(url, tls_context(srv.ca_der)) as c, pytest.raises(NetworkError, match="TLS handshake failed"):
            c.get("/v1/health", p.Health)
    finally:
        httpd.shutdown()
    # through the CLI: a console whose ROM trusts another CA
    ca_file = tmp_path / "impostor.pem"
    from vhw.pki import cert_pem

    ca_file.write_bytes(cert_pem(other_ca))
    dev = factory(cli, srv, tmp_path / "dave")
    rom2 = tmp_path / "wrong-ca.rom"
    assert cli("console", "rom", rom2, "--ca", ca_file, "--server", srv.url).code == 0
    assert cli("console", "setup", tmp_path / "c2", "--rom", rom2, "--hdd", dev["hdd"]).code == 0
    assert cli("console", "insert-card", dev["card"], "--console", tmp_path / "c2").code == 0
    r = cli("console", "register", "--console", tmp_path / "c2")
    assert r.code == 5 and "not signed by the trusted platform CA" in r.err and r.err.count("\n") == 1


def test_health_and_openapi(srv):
    with httpx.Client(base_url=srv.url, verify=tls_context(srv.ca_der)) as http:
        assert http.get("/v1/health").json() == {"status": "ok", "mode": "direct", "version": "0.1.0"}
        doc = http.get("/openapi.json").json()
    assert set(doc["paths"]) == {ep.path for ep in ENDPOINTS}


def test_openapi_in_repo_is_current():
    from vhw.server.endpoints import openapi_document

    committed = json.loads((Path(__file__).parent.parent / "vhw" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), "run `vhw server openapi -o vhw/openapi.json`"


def test_refusal_codes_are_distinct():
    assert len({c.exit_code for c in REFUSALS.values()}) == 5


def test_only_lost_races_are_conflicts(tmp_path):
    """A unique key taken meanwhile is a Conflict (run again); a NOT NULL or foreign-key
    violation is a bug, not retried."""
    import sqlite3

    from vhw.server.store import Conflict, SqliteStore

    store = SqliteStore(tmp_path / "c.db")
    store.migrate()
    try:
        with store.transaction() as tx:
            tx.execute(
                "INSERT INTO titles (title_id, name, content_key, title_digest, registered) VALUES (?, ?, ?, ?, ?)",
                "T-1",
                "t",
                b"k",
                b"d",
                1,
            )
        with pytest.raises(Conflict), store.transaction() as tx:
            tx.execute(
                "INSERT INTO titles (title_id, name, content_key, title_digest, registered) VALUES (?, ?, ?, ?, ?)",
                "T-1",
                "t",
                b"k",
                b"d",
                1,
            )
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
            tx.execute(
                "INSERT INTO titles (title_id, name, content_key, title_digest, registered) VALUES (?, ?, ?, ?, ?)",
                "T-2",
                None,
                b"k",
                b"d",
                1,
            )
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
            tx.execute("INSERT INTO media (mid, title_id, registered) VALUES (?, ?, ?)", "MD-X", "NO-SUCH-TITLE", 1)
    finally:
        store.close()
