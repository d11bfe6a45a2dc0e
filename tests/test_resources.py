"""The server keeps answering good clients while many idle, slow and oversize connections are open."""

from __future__ import annotations

import contextlib
import os
import ssl
import time

import httpx
import pytest
import trio

from vhw import protocol as p
from vhw.client import tls_context
from vhw.console import decisions
from vhw.httpapi import raise_file_limit

from .servers import RunningServer, make_users
from .world import new_disc

IDLE, SLOW, OVERSIZE = 250, 150, 100  # 500 bad connections at once
HUNG_UP = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("resources") / "home")
    yield server
    assert server.stop() == 0


async def test_good_clients_answered_within_1s_while_500_bad_connections_are_open(srv):
    raise_file_limit()
    host, port = srv.url.removeprefix("https://").rsplit(":", 1)
    port = int(port)
    ctx = tls_context(srv.ca_der)
    [kit] = await trio.to_thread.run_sync(make_users, srv, 1)
    opened = {"idle": 0, "slow": 0, "oversize": 0}
    streams: list = []

    async def idle():
        streams.append(await trio.open_tcp_stream(host, port))  # connects, never says anything
        opened["idle"] += 1

    async def tls_stream():
        stream = trio.SSLStream(await trio.open_tcp_stream(host, port), ctx, server_hostname=host)
        await stream.do_handshake()
        streams.append(stream)
        return stream

    async def slow(task_status=trio.TASK_STATUS_IGNORED):
        stream = await tls_stream()  # then a request, one byte every half second (slowloris)
        opened["slow"] += 1
        task_status.started()
        request = b"POST /v1/console/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        with contextlib.suppress(*HUNG_UP):  # the server may hang up on it: that is its right
            for b in request:
                await stream.send_all(bytes([b]))
                await trio.sleep(0.5)

    async def oversize(task_status=trio.TASK_STATUS_IGNORED):
        stream = await tls_stream()  # an endless header, sent slowly
        opened["oversize"] += 1
        task_status.started()
        with contextlib.suppress(*HUNG_UP):  # past 16 KiB of header the server hangs up
            await stream.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            for _ in range(1000):
                await stream.send_all(b"y" * 512)
                await trio.sleep(0.05)

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(IDLE):
            nursery.start_soon(idle)
        for _ in range(SLOW):
            await nursery.start(slow)
        for _ in range(OVERSIZE):
            await nursery.start(oversize)
        while opened["idle"] < IDLE:
            await trio.sleep(0.05)
        assert sum(opened.values()) == 500
        # meanwhile, good clients: new connections, health and real acquisitions
        async with httpx.AsyncClient(base_url=srv.url, verify=ctx, timeout=10) as good:
            for _ in range(20):
                start = time.perf_counter()
                assert (await good.get("/v1/health")).status_code == 200
                latencies.append(time.perf_counter() - start)
                body = p.encode(decisions.acquisition_request(*kit, new_disc(os.urandom(32))))
                start = time.perf_counter()
                resp = await good.post("/v1/console/acquire", json=body)
                latencies.append(time.perf_counter() - start)
                assert resp.status_code == 403 and resp.json()["message"] == "CONTENT CANNOT BE COPIED FROM THIS MEDIA"
        async with httpx.AsyncClient(base_url=srv.url, verify=ctx, timeout=10) as fresh:
            for _ in range(10):  # each on a new connection: TLS handshakes are answered too
                start = time.perf_counter()
                resp = await fresh.get("/v1/health", headers={"connection": "close"})
                latencies.append(time.perf_counter() - start)
                assert resp.status_code == 200
        nursery.cancel_scope.cancel()
    for stream in streams:
        with contextlib.suppress(*HUNG_UP):
            await stream.aclose()
    assert max(latencies) < 1.0, f"slowest answer {max(latencies):.3f} s"
