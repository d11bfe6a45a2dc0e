"""Two licensing hosts of one service, made the documented way (`vhw server export-host` on the
first, `vhw server import-host` on the second: two folders stand for two hosts), serving one
PostgreSQL under load: each disc is installed once whichever host is asked, and the audit log both
write is one chain that verifies against the heads each host signed."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle

import httpx

from vhw import protocol as p
from vhw.client import tls_context
from vhw.console import decisions
from vhw.errors import MediaRefused

from .servers import RunningServer, make_users, press


def acquire(url: str, ca: bytes, kit, medium) -> str:
    with httpx.Client(base_url=url, verify=tls_context(ca), timeout=60) as http:
        resp = http.post("/v1/console/acquire", json=p.encode(decisions.acquisition_request(*kit, medium)))
    return "ok" if resp.status_code == 200 else resp.json()["message"]


def test_two_hosts_serve_one_service_and_chain_one_audit_log(cli, postgres, tmp_path):
    first, second = tmp_path / "host-1", tmp_path / "host-2"
    assert cli("server", "init", "--home", first, "--db", postgres.new_database()).code == 0
    export = tmp_path / "carried"
    r = cli("server", "export-host", export, "--home", first)
    assert r.code == 0 and "master.key" in r.out, r
    assert (
        stat.S_IMODE(export.stat().st_mode) == 0o700 and stat.S_IMODE((export / "master.key").stat().st_mode) == 0o600
    )
    assert not (export / "vhw.db").exists() and not (export / "audit-heads.jsonl").exists()
    r = cli("server", "import-host", export, "--home", second, "--listen", "127.0.0.1:0")
    assert r.code == 0, r
    a, b = RunningServer.start(first), RunningServer.start(second)
    try:
        kits = make_users(a, 12)
        media = press(b, "HOSTS-1", 24)  # (the publisher's credential is the service's: either host)
        hosts = cycle([a, b])
        # every user acquires two discs, one through each host; then every disc a second time,
        # by another user, through the other host: refused however the two are spread
        jobs = [(next(hosts), kits[i // 2], media[i]) for i in range(24)]
        jobs += [(b if srv is a else a, kits[(i // 2 + 1) % 12], media[i]) for i, (srv, _, _) in enumerate(jobs)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda job: acquire(job[0].url, a.ca_der, job[1], job[2]), jobs))
        assert answers[:24] == ["ok"] * 24
        assert answers[24:] == [MediaRefused.text] * 24
    finally:
        assert a.stop() == 0 and b.stop() == 0  # (each chains what it wrote last, and signs the head)
    heads = [home / "audit-heads.jsonl" for home in (first, second)]
    # whichever host's chainer took the lock linked and signed; each signs into its own file
    assert any(h.exists() and h.read_text() for h in heads)
    for h in heads:
        h.touch()
    r = cli("server", "audit", "--verify", "--home", first, "--heads", heads[1])
    assert r.code == 0 and "intact" in r.out, r
    chained = int(r.out.split("intact: ", 1)[1].split()[0])
    out = cli("server", "audit", "--home", second, "--json")
    assert out.code == 0 and out.out.count('"issue-keys"') == 24 and chained >= 24 * 2
    # the control: a signed head the chain does not reach, in the second host's file, is found
    signed = next(h for h in heads if h.read_text()).read_text().splitlines()
    forged = signed[-1].replace('"position": ', '"position": 9', 1)
    assert forged != signed[-1]
    heads[1].write_text(heads[1].read_text() + forged + "\n")
    r = cli("server", "audit", "--verify", "--home", first, "--heads", heads[1])
    assert r.code == 3, r


def test_only_a_home_on_postgresql_has_hosts_to_share_it_with(cli, tmp_path):
    assert cli("server", "init", "--home", tmp_path / "alone").code == 0
    r = cli("server", "export-host", tmp_path / "carried", "--home", tmp_path / "alone")
    assert r.code == 9 and "SQLite" in r.err and len(r.err.strip().splitlines()) <= 2, r
    assert not (tmp_path / "carried").exists()
