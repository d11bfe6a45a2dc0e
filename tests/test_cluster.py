"""The licensing service on a highly available PostgreSQL cluster, failing over under load.

`tools/vhw_cluster.py` starts etcd, three PostgreSQL nodes under Patroni (synchronous, strict),
HAProxy routing to Patroni's primary, and two licensing servers. Sixteen clients (the real
:class:`vhw.client.Client`, with its retries, half on each server) acquire and confirm fresh discs,
and four more contend in pairs for the same discs, while the primary is:

- killed (its PostgreSQL and its Patroni, SIGKILL: a machine that died);
- switched over by the operator (`patronictl switchover`);
- partitioned away (its Patroni stopped with SIGSTOP: it cannot renew the leader lock, while its
  PostgreSQL runs on).

Then, read from the new primary: every acquisition a client saw answered is flagged for that
client's user, with its audit entries; every confirm a client saw is recorded; no MID went to two
users; `vhw server audit --verify` passes across it all. The outage (the longest time without a
successful acquisition) is printed; no install fails at the clients (their retries ride through).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vhw import protocol as p
from vhw.console import decisions
from vhw.errors import VhwError

from .servers import cluster_tool, make_users, press

CLIENTS, CONTENDERS = 16, 4

pytestmark = pytest.mark.slow


vc = cluster_tool()
if any(not vc.shutil.which(tool) for tool in ("etcd", "patroni", "haproxy")):
    pytest.skip("etcd, patroni and haproxy are needed (tools/setup.sh --cluster)", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = Path(tempfile.mkdtemp(prefix="vhw-cluster-")) / "c"  # (pytest's own folder is root's alone)
    folder.parent.chmod(0o755)  # (the postgres user enters it)
    c = vc.up(folder, servers=2)
    try:
        yield c
    finally:
        if os.environ.get("VHW_KEEP_CLUSTER"):  # (to read its logs: tools/vhw_cluster.py down FOLDER)
            print(f"\nthe cluster is kept in {folder}")
        else:
            vc.down(folder)
            folder.parent.rmdir()


@dataclass
class Seen:
    """What the clients saw: (user, MID) acquired and confirmed, failures, success times."""

    acquired: list[tuple[str, str]] = field(default_factory=list)
    confirmed: list[tuple[str, str]] = field(default_factory=list)
    refused: int = 0  # contenders refused a disc another user holds (as they must be)
    failed: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_load(srv: vc.Target, users, discs, contended, seconds: float, disrupt) -> tuple[Seen, float]:
    """CLIENTS + CONTENDERS threads for ``seconds``; ``disrupt()`` at a third of the time.
    Returns what they saw and when the disruption began."""
    seen = Seen()
    stop = time.monotonic() + seconds
    fresh = iter(discs)
    take = threading.Lock()

    def client(i: int) -> None:
        os.nice(5)  # (this thread: the clients stand for other machines, they yield to the cluster)
        view, hw = users[i]
        user = str(view.require_user())
        contender = i >= CLIENTS
        with srv.console_client(i % 2) as c:
            while time.monotonic() < stop:
                if contender:  # pairs of users after the same discs
                    pool = contended[(i - CLIENTS) // 2]
                    disc = pool[random.randrange(len(pool))]
                else:
                    with take:
                        disc = next(fresh)
                try:
                    c.call("/v1/console/acquire", decisions.acquisition_request(view, hw, disc), p.AcquireResponse)
                except VhwError as exc:
                    with seen.lock:
                        if contender and exc.exit_code in (12, 13):  # copy / media refused
                            seen.refused += 1
                        else:
                            seen.failed.append(f"acquire {disc.mid}: {exc}")
                    continue
                with seen.lock:
                    seen.acquired.append((user, str(disc.mid)))
                    seen.times.append(time.monotonic())
                try:
                    c.call("/v1/console/confirm", decisions.confirm_request(view, hw, disc), p.Done)
                except VhwError as exc:
                    with seen.lock:
                        seen.failed.append(f"confirm {disc.mid}: {exc}")
                    continue
                with seen.lock:
                    seen.confirmed.append((user, str(disc.mid)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS + CONTENDERS)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    began = time.monotonic()
    disrupt()
    for t in threads:
        t.join()
    return seen, began


def outage(seen: Seen, began: float) -> float:
    """The longest stretch without a successful acquisition, from the disruption on."""
    after = sorted(t for t in seen.times if t >= began)
    points = [began, *after]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=float("inf"))


def check_the_books(c, seen: Seen) -> None:
    """From the (new) primary: what the clients saw is recorded, and nothing is twice."""
    import psycopg

    assert not seen.failed, seen.failed[:5]
    with psycopg.connect(c.db_url) as conn:
        flagged = dict(conn.execute("SELECT mid, flagged_by FROM media WHERE flagged_by IS NOT NULL").fetchall())
        confirmed = {m for (m,) in conn.execute("SELECT mid FROM media WHERE confirmed_at IS NOT NULL")}
        issued: dict[str, set[str]] = {}
        for mid, detail in conn.execute("SELECT subject, detail FROM audit WHERE action = 'issue-keys'"):
            issued.setdefault(mid, set()).add(json.loads(detail)["user_id"])
    for user, mid in seen.acquired:
        assert flagged.get(mid) == user, (mid, user)  # an answered acquisition is on the new primary
        assert issued.get(mid) == {user}, (mid, issued.get(mid))  # ... with its audit entries
    for user, mid in seen.confirmed:
        assert mid in confirmed and flagged.get(mid) == user
    assert all(len(users) == 1 for users in issued.values())  # no MID to two users, ever
    r = subprocess.run(
        [sys.executable, "-m", "vhw", "server", "audit", "--home", str(c.home), "--verify"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "audit log intact" in r.stdout, r.stdout + r.stderr


def heal(c, node: int) -> None:
    """The disrupted node back in the cluster (a replica now), everything streaming again."""
    with contextlib.suppress(ProcessLookupError):
        vc.os.kill(c.pids[f"pg{node}"], signal.SIGCONT)
    if not vc.alive(c.pids[f"pg{node}"]):
        vc.restart_node(c, node)
    c.wait_healthy(timeout=120)


@pytest.fixture
def healthy(cluster):
    """Each test starts on a healthy cluster, whatever the one before it left (a failed test
    leaves its disrupted node as it was)."""
    for node in range(vc.NODES):
        heal(cluster, node)
    return cluster


@pytest.fixture(scope="module")
def load(cluster):
    srv = vc.Target(cluster)
    users = make_users(srv, CLIENTS + CONTENDERS)
    discs = press(srv, "HA-1", 6000)
    contended = [press(srv, f"HA-C{k}", 6) for k in range(CONTENDERS // 2)]
    return srv, users, iter(discs), contended


def test_a_killed_primary_fails_over_losing_nothing(healthy, load):
    cluster = healthy
    srv, users, discs, contended = load
    leader = cluster.leader()
    assert leader is not None
    seen, began = run_load(srv, users, discs, contended, 18, lambda: vc.kill_node(cluster, leader))
    new = cluster.leader()
    assert new is not None and new != leader
    took = outage(seen, began)
    print(f"\nfailover (kill -9 of the primary's PostgreSQL and Patroni): outage {took:.1f} s,"
          f" {len(seen.acquired)} acquisitions, {seen.refused} contenders refused")  # fmt: skip
    assert seen.acquired and took < 30
    check_the_books(cluster, seen)
    heal(cluster, leader)


def test_a_switchover_costs_no_install(healthy, load):
    cluster = healthy
    srv, users, discs, contended = load
    leader = cluster.leader()
    assert leader is not None

    seen, began = run_load(srv, users, discs, contended, 10, lambda: vc.switchover(cluster))
    assert cluster.leader() not in (None, leader)
    print(f"\nswitchover: outage {outage(seen, began):.1f} s, {len(seen.acquired)} acquisitions")
    check_the_books(cluster, seen)  # (no failure at the clients: their retries absorbed it)
    heal(cluster, leader)


def test_a_partitioned_primary_takes_no_write_after_the_promotion(healthy, load):
    cluster = healthy
    srv, users, discs, contended = load
    leader = cluster.leader()
    assert leader is not None
    seen, began = run_load(srv, users, discs, contended, 18, lambda: vc.kill_node(cluster, leader, signal.SIGSTOP))
    try:
        new = cluster.leader()
        assert new is not None and new != leader
        print(f"\npartition (the primary's Patroni stopped): outage {outage(seen, began):.1f} s,"
              f" {len(seen.acquired)} acquisitions")  # fmt: skip
        check_the_books(cluster, seen)
    finally:
        with contextlib.suppress(ProcessLookupError):
            vc.os.kill(cluster.pids[f"pg{leader}"], signal.SIGCONT)
    heal(cluster, leader)
    check_the_books(cluster, seen)  # and once the old primary is back: still all there
