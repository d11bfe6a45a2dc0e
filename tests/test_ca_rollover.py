"""A CA rollover (issue 32): `vhw server ca-rollover begin` makes the next CA and a
cross-certificate from the current one; consoles take the next CA at their next contact, on that
cross-certificate's word alone; `finish` retires the old CA, and consoles that followed drop it. A
console that was offline through it is told what to do, and does it.

The attack: whoever answers a console (a rogue server, a MITM that got a certificate somehow)
announces a CA of its own with a cross-certificate it made. The console takes a new CA only on a
cross-certificate from a CA it trusts already; the control is the same attack code, signing with
a CA the console does trust, which is taken."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vhw import pki
from vhw import protocol as p
from vhw.client import Client, tls_context

from .servers import RunningServer, cluster_tool, factory, listening_url, publish

NOW = datetime.datetime.now(datetime.UTC)


def announce(new_der: bytes, signer_der: bytes, signer_key) -> tuple[list[bytes], list[bytes]]:
    """A rollover announcement: anchors (the signer's CA and the new one) and the new CA's
    cross-certificate, signed with ``signer_key``."""
    return [signer_der, new_der], [pki.cross_sign(new_der, signer_der, signer_key)]


def test_a_console_takes_a_new_ca_only_on_the_word_of_one_it_trusts():
    old, old_key = pki.make_ca("vhw platform CA")
    new, _ = pki.make_ca("vhw platform CA 2")
    rogue, rogue_key = pki.make_ca("vhw platform CA")  # (the same name as the real one: names prove nothing)
    evil, _ = pki.make_ca("evil CA")

    # the rollover: the next CA is taken beside the old, then the old one retired
    anchors, cross = announce(new, old, old_key)
    assert pki.follow_rollover([old], anchors, cross) == [old, new]
    assert pki.follow_rollover([old, new], [new], []) == [new]

    # the attack: a CA of the attacker's, vouched for by a cross-certificate the attacker made
    anchors, cross = announce(evil, rogue, rogue_key)
    assert pki.follow_rollover([old], [evil], cross) == [old]  # nothing taken: kept its own
    assert pki.follow_rollover([old], anchors, cross) == [old]
    # control: the same attack code, had the console trusted the signer, is taken
    assert pki.follow_rollover([rogue], [evil], cross) == [evil]

    # a cross-certificate for another key under the new CA's name; one not valid now; an anchor
    # that is no CA: none taken
    other, _ = pki.make_ca("vhw platform CA 2")
    assert pki.follow_rollover([old], [other], [pki.cross_sign(new, old, old_key)]) == [old]
    late = pki.cross_sign(new, old, old_key, now=NOW + datetime.timedelta(days=1))
    assert pki.follow_rollover([old], [new], [late]) == [old]
    leaf, _ = pki.issue(old, old_key, "a server", hosts=["127.0.0.1"])
    assert pki.follow_rollover([old], [leaf], [pki.cross_sign(new, old, old_key)]) == [old]
    # an announcement that names none of the console's CAs and vouches for none: nothing changes
    assert pki.follow_rollover([old], [], []) == [old]
    # an anchor announced twice is taken once
    anchors, cross = announce(new, old, old_key)
    assert pki.follow_rollover([old], [*anchors, new, old], cross) == [old, new]


def test_a_rollover_that_consoles_follow_and_one_that_was_offline_catches_up(cli, tmp_path):
    port = cluster_tool().free_ports(1)  # (below the ephemeral range: the restarts take it again)
    srv = RunningServer.start(tmp_path / "home", listen=f"127.0.0.1:{port}")
    home = srv.home.root

    def game(n: int, count: int):
        src = tmp_path / f"src{n}"
        src.mkdir()
        (src / "main.py").write_text(f"print('rolled {n}')\n")
        (src / "vhw-title.json").write_text(f'{{"name": "Rolled {n}", "kind": "game", "entry": "main.py"}}')
        return publish(cli, srv, src, tmp_path, f"ROLLED-{n}", count=count)

    first, second = game(1, 2), game(2, 1)
    online, offline = factory(cli, srv, tmp_path / "a"), factory(cli, srv, tmp_path / "b")
    for dev in (online, offline):
        assert cli("console", "register", "--console", dev["console"]).code == 0
    old_ca = srv.ca_der
    assert srv.stop() == 0

    r = cli("server", "ca-rollover", "begin", "--home", home)
    assert r.code == 0 and "restart the server" in r.out, r
    assert cli("server", "ca-rollover", "begin", "--home", home).code != 0  # one at a time
    # the server's certificate stays the current CA's (every console trusts it) until the finish
    serving = (home / "server.pem").read_bytes()
    new_ca = (home / "ca-next.pem").read_bytes()
    assert x509.load_pem_x509_certificate(serving).issuer == x509.load_der_x509_certificate(old_ca).subject
    srv = RunningServer.start(home, listen=f"127.0.0.1:{port}")
    try:
        # what every answer names, and what /v1/trust announces: both CAs, and the cross-certificate
        with Client(srv.url, tls_context(old_ca)) as c:
            trust = c.get("/v1/trust", p.Trust)
            assert c.trust_seen == pki.anchors_digest(trust.anchors)
        assert trust.anchors == (old_ca, x509.load_pem_x509_certificate(new_ca).public_bytes(Encoding.DER))
        # the console that talks to the service takes the new CA beside the old
        con = ["--console", online["console"]]
        assert cli("console", "insert-disc", first[0], *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == 0 and "now trusts the platform's new CA" in r.err, r
        assert len(json.loads((online["console"] / "trust.json").read_text())["anchors"]) == 2
        r = cli("console", "trust", *con, "--json")
        assert [a["from"] for a in json.loads(r.out)["anchors"]] == ["ROM", "rollover"]
        # the credentials from before the rollover trust the old CA alone: finish says which
        r = cli("server", "ca-rollover", "finish", "--home", home)
        assert r.code != 0 and "publisher:publisher" in r.err and "credential add" in r.err, r
        for role in ("manufacturer", "publisher", "operator", "broker"):
            out = tmp_path / f"new-{role}.json"
            assert cli("server", "credential", "add", role, role, "-o", out, "--home", home).code == 0
    finally:
        assert srv.stop() == 0

    old_publisher = tmp_path / "old-publisher.json"
    shutil.copy(srv.credential("publisher"), old_publisher)
    r = cli("server", "ca-rollover", "finish", "--home", home)
    assert r.code == 0 and "key deleted" in r.out, r
    assert not (home / "ca-next.pem").exists() and (home / "ca.pem").read_bytes() == new_ca
    assert [f.name for f in home.glob("ca-retired-*.pem")] and not (home / "ca-next-key.pem").exists()
    assert x509.load_pem_x509_certificate((home / "server.pem").read_bytes()).issuer == (
        x509.load_pem_x509_certificate(new_ca).subject
    )
    srv = RunningServer.start(home, listen=f"127.0.0.1:{port}")
    try:
        with Client(srv.url, tls_context(srv.ca_der)) as c:
            assert c.get("/v1/trust", p.Trust).anchors == (srv.ca_der,)
        # the console that followed drops the retired CA at its next contact
        con = ["--console", online["console"]]
        assert cli("console", "eject-disc", *con).code == 0
        assert cli("console", "insert-disc", second[0], *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == 0 and "no longer trusts the platform's retired CA" in r.err, r
        assert json.loads(cli("console", "trust", *con, "--json").out)["anchors"][0]["from"] == "rollover"
        # a credential from before: refused at once, with what to do; one issued since works
        pub = ["--server", srv.url]
        r = cli(
            "disc", "press", tmp_path / "ROLLED-1.master", "-o", tmp_path / "more", "--credential", old_publisher, *pub
        )
        assert r.code == 5 and "not signed by the trusted platform CA" in r.err and "credential" in r.err, r
        new_pub = tmp_path / "new-publisher.json"
        r = cli("disc", "press", tmp_path / "ROLLED-1.master", "-o", tmp_path / "more", "--credential", new_pub, *pub)
        assert r.code == 0, r
        # the console that was offline through the rollover: told what to do; does it; installs
        con = ["--console", offline["console"]]
        assert cli("console", "insert-disc", first[1], *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == 5 and "vhw console trust --add" in r.err, r
        (tmp_path / "ca.pem").write_bytes(new_ca)
        assert cli("console", "trust", "--add", tmp_path / "ca.pem", *con).code == 0
        r = cli("console", "install", *con)
        assert r.code == 0, r
        # ... and a certificate that is not a CA is refused as an anchor
        r = cli("console", "trust", "--add", home / "signing.pem", *con)
        assert r.code != 0 and "not a CA certificate" in r.err, r
    finally:
        assert srv.stop() == 0


def test_a_broker_announces_what_its_identity_carries(cli, tmp_path):
    """In broker mode the consoles talk to the broker: it announces the CAs its identity from the
    platform carries (`vhw server issue-cert` during a rollover, taken with `vhw broker
    identity`), and its consoles follow."""
    from .servers import start_brokered, stop_brokered

    server, proc = start_brokered(tmp_path)
    run = [sys.executable, "-m", "vhw"]
    try:
        old_ca = server.ca_der
        with Client(server.broker_url, tls_context(old_ca)) as c:
            assert c.get("/v1/trust", p.Trust).anchors == (old_ca,)
        home = server.home.root
        subprocess.run([*run, "server", "ca-rollover", "begin", "--home", str(home)], check=True, capture_output=True)
        tls = tmp_path / "tls2"
        subprocess.run(
            [*run, "server", "issue-cert", "broker", "-o", str(tls), "--home", str(home)],
            check=True,
            capture_output=True,
        )
        r = subprocess.run(
            [*run, "broker", "identity", "--tls", str(tls), "--home", str(server.broker_home)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0 and "restart the broker" in r.stdout, r
        proc.terminate()
        proc.wait(15)
        proc = subprocess.Popen(
            [*run, "broker", "run", "--home", str(server.broker_home), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "broker2.log", "wb"),
            text=True,
        )
        url = listening_url(proc.stdout.readline())
        with Client(url, tls_context(old_ca)) as c:  # (a console that trusts only the old CA)
            trust = c.get("/v1/trust", p.Trust)
            assert c.trust_seen == pki.anchors_digest(trust.anchors)
        assert trust.anchors[0] == old_ca and len(trust.anchors) == 2 and len(trust.cross) == 1
        # a console of the broker's takes the next CA at its first contact
        server.broker_url = url
        dev = factory(cli, server, tmp_path / "dev")
        config = dev["console"] / "console.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "server": url}))
        account = ["account", "add", "ann", "--password", "ann-secret-pw", "--home", server.broker_home]
        assert cli("broker", *account).code == 0
        con = ["--console", dev["console"]]
        assert cli("console", "account", "ann", "--password", "ann-secret-pw", *con).code == 0
        r = cli("console", "register", *con)
        assert r.code == 0 and "now trusts the platform's new CA" in r.err, r
        assert json.loads((dev["console"] / "trust.json").read_text())["anchors"] == [
            base64.b64encode(a).decode() for a in trust.anchors
        ]
    finally:
        stop_brokered(server, proc)


def test_a_finish_that_stopped_anywhere_completes_when_run_again(tmp_path, monkeypatch):
    """`finish` killed after any of its file writes or removals: running it again ends where an
    uninterrupted finish ends (the next CA in place, its key with it, the old one retired)."""
    import os

    from vhw.server import identity
    from vhw.server.home import ServerHome

    made = ServerHome.init(tmp_path / "made")
    made.pki.begin_rollover()
    new_ca, new_key = (made.root / "ca-next.pem").read_bytes(), (made.root / "ca-next-key.pem").read_bytes()
    steps = 0
    while True:
        home = ServerHome(tmp_path / f"home{steps}")
        shutil.copytree(made.root, home.root)
        done = [0]
        real_write, real_unlink = identity.atomic_write, os.unlink

        def stop_after(step: int, real, done=done):
            def step_once(*args, **kw):
                if done[0] == step:
                    raise KeyboardInterrupt  # (the kill)
                done[0] += 1
                return real(*args, **kw)

            return step_once

        monkeypatch.setattr(identity, "atomic_write", stop_after(steps, real_write))
        monkeypatch.setattr(os, "unlink", stop_after(steps, real_unlink))
        try:
            home.pki.finish_rollover()
            finished_at_once = True
        except KeyboardInterrupt:
            finished_at_once = False
        monkeypatch.setattr(identity, "atomic_write", real_write)
        monkeypatch.setattr(os, "unlink", real_unlink)
        if not finished_at_once:
            assert home.pki.rolling or (home.root / "ca.pem").read_bytes() == new_ca
            assert home.pki.rolling  # (ca-next.pem goes last: until then, finish is still to run)
            assert home.pki.finish_rollover().exists()
        assert (home.root / "ca.pem").read_bytes() == new_ca and (home.root / "ca-key.pem").read_bytes() == new_key
        assert not home.pki.rolling and home.pki.trust().anchors == (home.pki.ca_der(),)
        server = x509.load_pem_x509_certificate((home.root / "server.pem").read_bytes())
        assert server.issuer == x509.load_pem_x509_certificate(new_ca).subject
        assert len(list(home.root.glob("ca-retired-*.pem"))) == 1
        if finished_at_once:
            break
        steps += 1
    assert steps >= 6  # (every write and removal of a finish was a place to stop)


def test_credentials_are_told_apart_by_the_second_the_rollover_began(tmp_path):
    """Credentials are dated to the second. Those issued right before `begin`, in the same second,
    are the old CA's and must be issued again; one issued right after is the next CA's."""
    from vhw.server.home import ServerHome

    home = ServerHome.init(tmp_path / "home")  # (its four credentials: a moment before the begin)
    home.pki.begin_rollover()
    store = home.store()
    try:
        before = home.credentials.issued_before(store, home.pki.rollover_begun())
        assert before == (
            ("broker", "broker"),
            ("manufacturer", "manufacturer"),
            ("operator", "operator"),
            ("publisher", "publisher"),
        )
        home.credentials.add(store, "publisher", "publisher", tmp_path / "publisher.json")
        after = home.credentials.issued_before(store, home.pki.rollover_begun())
        assert ("publisher", "publisher") not in after and len(after) == 3
        cred = json.loads((tmp_path / "publisher.json").read_text())
        assert cred["ca"].count("BEGIN CERTIFICATE") == 2  # (it trusts both CAs)
    finally:
        store.close()
