"""Several server processes on one PostgreSQL database: the same behaviour, once per disc."""

from __future__ import annotations

import os
import random
import signal

import httpx
import psutil
import psycopg
import pytest
import trio

from vhw import protocol as p
from vhw.client import tls_context
from vhw.console import decisions

from .conftest import MEDIA
from .servers import RunningServer, make_users, press

MEDIA_REFUSED = MEDIA.rstrip("\n")  # as the API says it, without the CLI's newline


@pytest.fixture(scope="module")
def two(postgres, tmp_path_factory):
    url = postgres.new_database()
    server = RunningServer.start(tmp_path_factory.mktemp("two") / "home", init=["--db", url], run=["--workers", "2"])
    assert len(server.workers) == 2
    server.db = url
    yield server
    assert server.stop() == 0


async def test_200_concurrent_acquisitions_across_two_processes_12_times(two):
    kits = await trio.to_thread.run_sync(make_users, two, 200)
    mids = await trio.to_thread.run_sync(press, two, "TWO-PROC-1", 12)
    ctx = tls_context(two.ca_der)
    clients = [
        httpx.AsyncClient(base_url=two.url, verify=ctx, timeout=120, limits=httpx.Limits(max_connections=1))
        for _ in kits
    ]
    processes: set[str] = set()
    try:
        for mid in mids:
            outcomes: list[str] = []

            async def one(client, kit, mid=mid, outcomes=outcomes):
                body = p.encode(decisions.acquisition_request(*kit, mid))
                resp = await client.post("/v1/console/acquire", json=body)
                processes.add(resp.headers["x-vhw-process"])
                outcomes.append("ok" if resp.status_code == 200 else resp.json()["message"])

            async with trio.open_nursery() as nursery:
                for client, kit in zip(clients, kits, strict=True):
                    nursery.start_soon(one, client, kit)
            assert outcomes.count("ok") == 1, outcomes
            assert outcomes.count(MEDIA_REFUSED) == 199
    finally:
        for client in clients:
            await client.aclose()
    assert len(processes) == 2  # both processes took part


async def test_killing_a_process_mid_request_loses_no_flag_and_issues_no_second_key(two):
    kits = await trio.to_thread.run_sync(make_users, two, 40)
    ctx = tls_context(two.ca_der)
    rnd = random.Random(5)
    interrupted = 0
    for round_ in range(6):
        mids = await trio.to_thread.run_sync(press, two, f"KILL-PROC-{round_}", 20)
        # two users want each disc; every client keeps its connection, spread over the processes
        clients = [
            httpx.AsyncClient(base_url=two.url, verify=ctx, timeout=60, limits=httpx.Limits(max_connections=1))
            for _ in kits
        ]
        for c in clients:
            await c.get("/v1/health")
        victim = (await clients[0].get("/v1/health")).headers["x-vhw-process"]
        got_keys: dict[str, set[str]] = {str(m): set() for m in mids}
        failed: list[tuple] = []

        async def one(client, kit, mid, failed=failed, got_keys=got_keys):
            body = p.encode(decisions.acquisition_request(*kit, mid))
            try:
                resp = await client.post("/v1/console/acquire", json=body)
            except httpx.HTTPError:
                failed.append((kit, mid))
                return
            if resp.status_code == 200:
                got_keys[str(mid)].add(str(kit[0].user))
            else:
                assert resp.json()["message"] == MEDIA_REFUSED

        async with trio.open_nursery() as nursery:
            for i, (client, kit) in enumerate(zip(clients, kits, strict=True)):
                nursery.start_soon(one, client, kit, mids[i // 2])
            await trio.sleep(rnd.uniform(0.0, 0.03))
            os.kill(int(victim), signal.SIGKILL)  # mid-request for many of them
        interrupted += len(failed)
        for c in clients:
            await c.aclose()
        # the supervisor starts another process; the interrupted consoles simply try again
        async with httpx.AsyncClient(base_url=two.url, verify=ctx, timeout=60) as again:
            for kit, mid in failed:
                for _ in range(50):
                    try:
                        resp = await again.post(
                            "/v1/console/acquire", json=p.encode(decisions.acquisition_request(*kit, mid))
                        )
                        break
                    except httpx.HTTPError:
                        await trio.sleep(0.1)
                else:
                    pytest.fail(f"{mid}: the supervisor's new process did not answer in 50 tries")
                if resp.status_code == 200:
                    got_keys[str(mid)].add(str(kit[0].user))
        with psycopg.connect(two.db) as db:
            flags = dict(
                db.execute("SELECT mid, flagged_by FROM media WHERE title_id = %s", (f"KILL-PROC-{round_}",)).fetchall()
            )
            audit = db.execute(
                "SELECT subject, count(*) FROM audit WHERE action = 'flag-mid' AND subject = ANY(%s) GROUP BY subject",
                ([str(m) for m in mids],),
            ).fetchall()
        for mid, users in got_keys.items():
            assert len(users) <= 1, f"{mid}: keys issued to two users {users}"  # never a second key
            if users:
                assert flags[mid] == next(iter(users)), mid  # the flag behind every issued key is there
            assert flags[mid] is not None  # every disc went to someone in the end
            assert users, f"{mid}: its owner could not fetch its keys again"
        assert all(count == 1 for _, count in audit)
    assert interrupted > 0, "no request was in flight when a process was killed"


def test_a_supervisor_killed_outright_takes_its_workers_with_it(postgres, tmp_path):
    """SIGKILL (or the out-of-memory killer) gives the supervisor no time to stop its workers: the
    kernel does, by the parent-death signal each was started with (``vhw.lifetime``), so no worker
    serves on unsupervised, holding the port and the database's connections."""
    server = RunningServer.start(tmp_path / "home", init=["--db", postgres.new_database()], run=["--workers", "2"])
    workers = [psutil.Process(pid) for pid in server.workers]
    assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for worker in alive:  # (not left behind by a failing run either)
        worker.kill()
    assert not alive, f"workers left serving after their supervisor was killed: {[w.pid for w in alive]}"
