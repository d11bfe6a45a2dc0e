"""Bytes that make hypercorn's HTTP layer fail, sent by a client that holds no credential: each
of them ended hypercorn's whole server (``vhw.httpapi.OneConnection`` drops that connection alone).
Used against the licensing server (``tests/test_server.py``) and the broker (``tests/test_service.py``)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h2.config  # (hypercorn's own HTTP/2, a dependency of it)
import h2.connection
import h2.events

from vhw.client import tls_context

DROPPED = b"a connection was dropped: the HTTP layer failed"


def _upgrade_with_bytes_after(sock: socket.socket) -> None:
    """A websocket upgrade with bytes after it (hypercorn issue #225)."""
    sock.sendall(
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ==\r\n\r\nx\n"
    )
    _read_until_closed(sock)


def _http2_body_after_the_answer(sock: socket.socket) -> None:
    """HTTP/2 without asking (its preface sent straight away): a POST too large to take, its body
    sent until it is answered (413), then one more piece of it (hypercorn issue #329)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":path", "/v1/console/acquire"), (":scheme", "https"), (":authority", "x")]
    conn.send_headers(1, [*headers, ("content-type", "application/json"), ("content-length", str(4 << 20))])
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    answered = False
    with contextlib.suppress(OSError):  # (the server may drop the connection at any time once it answered)
        while not answered:
            room = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if room:  # as much of the body as the server lets us send
                conn.send_data(1, bytes(room))
            else:
                data = sock.recv(65536)
                if not data:
                    break
                answered = any(isinstance(e, h2.events.ResponseReceived) for e in conn.receive_data(data))
            sock.sendall(conn.data_to_send())
        piece = b"x" * 100  # a DATA frame of stream 1, written out: the client's own state would refuse it
        sock.sendall(len(piece).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + piece)
    _read_until_closed(sock)


def _read_until_closed(sock: socket.socket) -> None:
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


HOSTILE: list[Callable[[socket.socket], None]] = [_upgrade_with_bytes_after, _http2_body_after_the_answer]

BARE_HYPERCORN = """
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def acquire(request):  # answered before the body is read, as vhw answers a body too large
    return JSONResponse({"error": "too-large"}, status_code=413)

async def health(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/v1/console/acquire", acquire, methods=["POST"]), Route("/v1/health", health)])
config = Config()
config.bind = ["127.0.0.1:0"]

async def main():
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(serve, app, config)
        print(url.rsplit(":", 1)[1], flush=True)

trio.run(main)
"""


def attack_over_tls(url: str, ca_der: bytes, attack: Callable[[socket.socket], None]) -> None:
    """``attack`` on a TLS connection to the server at ``url`` (https://HOST:PORT)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    tls = tls_context(ca_der)
    tls.check_hostname = False
    with socket.create_connection((host, int(port))) as raw, tls.wrap_socket(raw) as sock:
        attack(sock)


def said_since(log: Path, offset: int, line: bytes) -> bool:
    """Whether ``log`` says ``line`` after its first ``offset`` bytes."""
    with log.open("rb") as f:
        f.seek(offset)
        return line in f.read()


def ends_bare_hypercorn(attack: Callable[[socket.socket], None], folder: Path) -> bool:
    """The control: whether ``attack`` ends a bare hypercorn server (the Starlette app above,
    served as hypercorn serves it, over plain HTTP) with a traceback."""
    script = folder / "bare.py"
    script.write_text(BARE_HYPERCORN)
    bare = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None and bare.stderr is not None
        with socket.create_connection(("127.0.0.1", int(bare.stdout.readline()))) as sock:
            attack(sock)
        code = bare.wait(30)
        return code != 0 and "Traceback" in bare.stderr.read()
    finally:
        bare.kill()
