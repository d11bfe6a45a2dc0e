"""Several licensing server processes on one port, supervised: ``vhw server run --workers N``.

Why not hypercorn's own ``workers``: it shuts every worker down when one exits with an error (a
worker killed mid-request would stop the service), and it runs only the ASGI app in each process;
here each worker is a whole ``vhw server run`` (migrations, the batcher, the audit chainer), and a
worker that dies is replaced while the others go on serving (``tests/test_multiprocess.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from ..errors import StateError
from ..httpapi import reuse_port_socket, split_listen
from ..lifetime import ending_with
from . import metrics
from .home import ServerHome

__all__ = ["run_workers"]


log = logging.getLogger(__name__)


def run_workers(
    home: ServerHome,
    *,
    workers: int,
    listen: tuple[str, int] | None,
    database: str | None,
    ready: Callable[[str], None],
    log_format: str = "text",
    metrics_listen: tuple[str, int] | None = None,
    pool_size: int | None = None,
) -> int:
    """Supervise ``workers`` server processes on one port until SIGINT/SIGTERM.

    Each worker is ``vhw server run --reuse-port`` on the same address (one database behind them
    all, PostgreSQL for real load). A worker that dies is replaced; a stop signal is passed on to
    all of them, and they finish their open requests first. They count their metrics into one
    multiprocess folder (``metrics/`` in the home, wiped at each start), so that any of them
    answers /metrics for all; the first one also serves ``metrics_listen``.
    """
    host, port = listen or split_listen(home.config().listen)
    holder = reuse_port_socket(host, port)  # fixes the port (when 0 was asked) until all listen
    port = holder.getsockname()[1]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    multiproc = home.path("metrics")
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir(mode=0o700)
    pool = _Workers(
        _worker_argv(home, address, log_format, database) + (["--pool-size", str(pool_size)] if pool_size else []),
        {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        ["--metrics-listen", f"{metrics_listen[0]}:{metrics_listen[1]}"] if metrics_listen else [],
    )
    old = {sig: signal.signal(sig, pool.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs = [pool.start(first=i == 0) for i in range(workers)]
        holder.close()
        ready(f"https://{address} ({workers} processes: {', '.join(str(p.pid) for p in procs)})")
        pool.supervise(procs, str(multiproc))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def _worker_argv(home: ServerHome, address: str, log_format: str, database: str | None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vhw",
        "server",
        "run",
        "--home",
        str(home.root),
        "--listen",
        address,
        "--reuse-port",
        "--log-format",
        log_format,
        *(["--db", database] if database else []),
    ]


class _Workers:
    """The server processes of one supervisor: started, replaced when one dies, stopped together."""

    def __init__(self, argv: list[str], env: dict[str, str], scrape: list[str]):
        self.argv, self.env, self.scrape = argv, env, scrape
        self.stopping = False

    def start(self, first: bool = False) -> subprocess.Popen[str]:
        argv = self.argv + (self.scrape if first else [])
        # (a supervisor killed outright takes its workers with it: none serves on unsupervised)
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, env=self.env, preexec_fn=ending_with(os.getpid())
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.kill()
            raise StateError(f"a server worker did not start ({line.strip() or 'no output'})")
        return proc

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def supervise(self, procs: list[subprocess.Popen[str]], multiproc: str) -> None:
        try:
            while not self.stopping:
                for i, proc in enumerate(procs):
                    if proc.poll() is not None and not self.stopping:
                        log.warning("server process %d ended (%s); starting another", proc.pid, proc.returncode)
                        metrics.mark_dead(proc.pid, multiproc)
                        procs[i] = self.start(first=i == 0)
                time.sleep(0.1)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
